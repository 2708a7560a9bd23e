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

let jsonObject (text: string) =
    match Text.Json.Nodes.JsonNode.Parse text with
    | null -> failwith "null JSON"
    | node -> node.AsObject()

/// The colour of style k.
let colour (k: int) =
    let c = SKColor.Parse(Plots.Palette.[k])
    c.Red, c.Green, c.Blue

let close (a: byte) (b: byte) = abs (int a - int b) <= 8

/// Pixels of style k's colour in a bitmap.
let pixelsOf (bitmap: SKBitmap) (k: int) =
    let r, g, b = colour k
    let mutable n = 0
    for y in 0 .. bitmap.Height - 1 do
        for x in 0 .. bitmap.Width - 1 do
            let p = bitmap.GetPixel(x, y)
            if close p.Red r && close p.Green g && close p.Blue b then n <- n + 1
    n

/// Per pixel column, the middle pixel of the first series' colour (style `style`), away from the
/// legend, which sits on the other side of a rising or falling curve; a straight line drawn in that
/// colour (with its markers and dashes) gives rows that fit a straight line.
let curveFit (bitmap: SKBitmap) (rising: bool) (style: int) =
    let r, g, b = colour style
    let points =
        [ for x in 0 .. bitmap.Width - 1 do
              // Leave out the legend's corner: lower right beside a rising curve, upper right beside a falling one.
              let inLegend y = x > bitmap.Width - 340 && (if rising then y > bitmap.Height - 160 else y < 160)
              let ys = [ for y in 0 .. bitmap.Height - 1 do
                             let p = bitmap.GetPixel(x, y)
                             if close p.Red r && close p.Green g && close p.Blue b && not (inLegend y) then yield float y ]
              // The middle of the line's pixels in the column: markers and line width spread around it.
              if not ys.IsEmpty then yield float x, List.item (ys.Length / 2) (List.sort ys) ]
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
            // The first series of each plot and its style: training loss (0), validation accuracy (1), block 1 (0).
            let expected = [ "loss.png", 1.0, 0; "accuracy.png", -1.0, 1; "defect.png", 1.0, 0; "multipliers.png", 1.0, 0 ]
            for name, sign, style in expected do
                let path = Path.Combine(dir, "plots", name)
                Expect.stringContains out name $"{name} is reported"
                use bitmap = SKBitmap.Decode(path)
                Expect.isNotNull bitmap $"{name} decodes as an image"
                Expect.equal (bitmap.Width, bitmap.Height) (Plots.Width, Plots.Height) $"{name}: 800×500"
                let colours = Collections.Generic.HashSet<SKColor>()
                for y in 0 .. 7 .. bitmap.Height - 1 do
                    for x in 0 .. 7 .. bitmap.Width - 1 do colours.Add(bitmap.GetPixel(x, y)) |> ignore
                Expect.isGreaterThan colours.Count 5 $"{name} is not blank"
                let count, width, slope, r2 = curveFit bitmap (sign < 0.0) style
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
        test "overlays keep one colour per run in every plot: a run without defects leaves its colour unused in the defect plot" {
            let dir = newDir ()
            let metrics (defects: bool) (offset: float) =
                [ for e in 1 .. 5 ->
                      let d = if defects then $",\"defects\":[{0.1 / float e}]" else ""
                      jsonObject($"{{\"epoch\":{e},\"train_loss\":{2.0 - 0.1 * float e - offset},\"validation_accuracy\":{0.1 * float e + offset},\"test_accuracy\":{0.1 * float e + offset}{d}}}") ]
                :> Collections.Generic.IReadOnlyList<_>
            Plots.Overlay(dir, [| ("backprop", metrics false 0.3); ("extraprop", metrics true 0.0) |]) |> ignore
            use accuracy = SKBitmap.Decode(Path.Combine(dir, "accuracy.png"))
            use defect = SKBitmap.Decode(Path.Combine(dir, "defect.png"))
            Expect.isGreaterThan (pixelsOf accuracy 0) 100 "backprop in colour 0 in the accuracy plot"
            Expect.isGreaterThan (pixelsOf accuracy 1) 100 "extraprop in colour 1"
            Expect.isGreaterThan (pixelsOf defect 1) 100 "extraprop keeps colour 1 in the defect plot"
            Expect.isLessThan (pixelsOf defect 0) 20 "and colour 0 (backprop's) is not reused"
        }
        test "a curve lying exactly under another stays visible" {
            let dir = newDir ()
            let same =
                [ for e in 1 .. 5 -> jsonObject($"{{\"epoch\":{e},\"train_loss\":{2.0 - 0.1 * float e},\"validation_accuracy\":{0.1 * float e},\"test_accuracy\":{0.1 * float e}}}") ]
                :> Collections.Generic.IReadOnlyList<_>
            Plots.Overlay(dir, [| ("backprop", same); ("fenchel-bp", same) |]) |> ignore
            use accuracy = SKBitmap.Decode(Path.Combine(dir, "accuracy.png"))
            // Away from the legend (its swatches are drawn in both colours whatever the curves do).
            let below = new SKBitmap(accuracy.Width, accuracy.Height - 140)
            accuracy.ExtractSubset(below, SKRectI(0, 0, accuracy.Width, accuracy.Height - 140)) |> ignore
            Expect.isGreaterThan (pixelsOf below 0) 300 "the curve drawn first shows around the one drawn over it"
            Expect.isGreaterThan (pixelsOf below 1) 300 "and the one drawn over it shows"
        }
        test "log axes are labelled at decades, also when the values lie within one (0.0251 to 0.0316)" {
            let struct (from, upTo, ticks) = Plots.LogTicks(Math.Log10 0.0251, Math.Log10 0.0316)
            Expect.equal (from, upTo) (-2.0, -1.0) "the axis spans the decade around the values"
            let labels = ticks |> Seq.choose (fun (struct (_, l)) -> Option.ofObj l) |> List.ofSeq
            Expect.equal labels [ "1e-2"; "1e-1" ] "labelled at the decades only"
            Expect.equal (ticks |> Seq.filter (fun (struct (_, l)) -> isNull l) |> Seq.length) 8 "minor ticks at 2–9 × 10^-2"
            let struct (_, _, wide) = Plots.LogTicks(-5.3, 1.2)
            Expect.equal (wide |> Seq.choose (fun (struct (_, l)) -> Option.ofObj l) |> List.ofSeq) [ "1e-6"; "1e-5"; "1e-4"; "1e-3"; "1e-2"; "1e-1"; "1e0"; "1e1"; "1e2" ] "every decade"
        }
    ]
