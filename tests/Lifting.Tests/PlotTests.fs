module Lifting.Tests.PlotTests

open System
open System.IO
open Expecto
open SkiaSharp
open Lifting.Host
open Lifting.Tests.HostTests

/// A run folder with hand-made metrics: every plotted series is a straight line in its plot's
/// scale (accuracies rise linearly, losses fall linearly, defects and multiplier norms fall by a
/// decade per epoch on their log scale).
let syntheticRun () =
    let dir = newDir ()
    Directory.CreateDirectory dir |> ignore
    File.WriteAllText(Path.Combine(dir, "config.json"), "{ \"method\": \"extraprop\" }")
    File.WriteAllText(Path.Combine(dir, "summary.json"), "{ \"status\": \"completed\" }")
    let line (e: int) =
        let f (x: float) = x.ToString("R", Globalization.CultureInfo.InvariantCulture)
        let acc = 0.1 + 0.08 * float e
        let loss = 2.0 - 0.15 * float e
        let defect = Math.Pow(10.0, -float e)
        $"{{\"epoch\":{e},\"train_loss\":{f loss},\"objective\":{f (loss + 0.1)},\"validation_accuracy\":{f acc},\"validation_loss\":{f (loss + 0.2)},\"test_accuracy\":{f (acc - 0.05)},\"test_loss\":{f (loss + 0.3)},\"defects\":[{f defect},{f (2.0 * defect)}],\"multiplier_norms\":[{f (10.0 * defect)},{f (5.0 * defect)}]}}"
    File.WriteAllLines(Path.Combine(dir, "metrics.jsonl"), [ for e in 1 .. 10 -> line e ])
    dir

/// The first series' colour.
let series0 =
    let c = SKColor.Parse(Plots.Palette.[0])
    c.Red, c.Green, c.Blue

let close (a: byte) (b: byte) = abs (int a - int b) <= 8

/// Per pixel column, the top-most (for a rising curve) or bottom-most (falling) pixel of the first
/// series' colour, away from the legend, which sits on the other side of a rising or falling curve;
/// a straight line drawn in that colour gives rows that fit a straight line.
let curveFit (bitmap: SKBitmap) (rising: bool) =
    let r, g, b = series0
    let points =
        [ for x in 0 .. bitmap.Width - 1 do
              let ys = [ for y in 0 .. bitmap.Height - 1 do
                             let p = bitmap.GetPixel(x, y)
                             if close p.Red r && close p.Green g && close p.Blue b then yield float y ]
              if not ys.IsEmpty then yield float x, (if rising then List.min ys else List.max ys) ]
    let n = float points.Length
    let mx = points |> List.averageBy fst
    let my = points |> List.averageBy snd
    let sxy = points |> List.sumBy (fun (x, y) -> (x - mx) * (y - my))
    let sxx = points |> List.sumBy (fun (x, _) -> (x - mx) ** 2.0)
    let syy = points |> List.sumBy (fun (_, y) -> (y - my) ** 2.0)
    let slope = sxy / sxx
    let r2 = sxy * sxy / (sxx * syy)
    points.Length, (points |> List.map fst |> List.max) - (points |> List.map fst |> List.min), slope, r2

[<Tests>]
let tests =
    testList "PlotTests" [
        test "plot draws real PNGs: decoded, 800×500, not blank, and the first series is the known straight line" {
            let dir = syntheticRun ()
            let code, out, err = lifting [ "plot"; dir ]
            Expect.equal code 0 err
            // Rising accuracy goes up the image (negative slope in pixel rows); falling curves go down.
            let expected = [ "loss.png", 1.0; "accuracy.png", -1.0; "defect.png", 1.0; "multipliers.png", 1.0 ]
            for name, sign in expected do
                let path = Path.Combine(dir, "plots", name)
                Expect.stringContains out name $"{name} is reported"
                use bitmap = SKBitmap.Decode(path)
                Expect.isNotNull bitmap $"{name} decodes as an image"
                Expect.equal (bitmap.Width, bitmap.Height) (Plots.Width, Plots.Height) $"{name}: 800×500"
                let colours = Collections.Generic.HashSet<SKColor>()
                for y in 0 .. 7 .. bitmap.Height - 1 do
                    for x in 0 .. 7 .. bitmap.Width - 1 do colours.Add(bitmap.GetPixel(x, y)) |> ignore
                Expect.isGreaterThan colours.Count 5 $"{name} is not blank"
                let count, width, slope, r2 = curveFit bitmap (sign < 0.0)
                Expect.isGreaterThan count 300 $"{name}: the first series spans the plot ({count} columns)"
                Expect.isGreaterThan width 500.0 $"{name}: from the first epoch to the last"
                Expect.isGreaterThan (sign * slope) 0.1 $"{name}: the line goes the way the values go (slope {slope})"
                Expect.isGreaterThan r2 0.99 $"{name}: the series is drawn as the straight line it is (r² {r2})"
        }
        test "a run's plots cover what its method has: no defect or multiplier plots for backprop" {
            let dir = newDir ()
            let code, _, err = lifting [ "train"; "--net"; "64-16-10"; "--epochs"; "2"; "--out"; dir ]
            Expect.equal code 0 err
            let files = Directory.GetFiles(Path.Combine(dir, "plots")) |> Array.map Path.GetFileName |> Array.sort
            Expect.sequenceEqual files [| "accuracy.png"; "loss.png" |] "loss and accuracies"
        }
    ]
