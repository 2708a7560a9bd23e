// Back-propagation and ExtraProp (seed 001) on the UCI digits, side by side on the same data,
// program, budget and machine: validation accuracy per epoch, the test accuracy at the epoch
// selected on validation, the final defect, seconds per epoch, and a plot.
//
//     dotnet build src/Lifting.Examples -c Release
//     dotnet fsi src/Lifting.Examples/compare.fsx [--epochs 10] [--out compare.png]
#load "References.fsx"
#r "nuget: ScottPlot, 5.1.59"

open Lifting.FSharp

let args = fsi.CommandLineArgs |> Array.skip 1
let arg name fallback =
    match Array.tryFindIndex ((=) name) args with
    | Some i when i + 1 < args.Length -> args.[i + 1]
    | _ -> fallback
let epochs = int (arg "--epochs" "10")
let out = arg "--out" (System.IO.Path.Combine(__SOURCE_DIRECTORY__, "compare.png"))

// ŷ = f₂(f₁(x; w₁); w₂) with ℓ = cross-entropy.
let digits = Data.load "digits"
let f1 = Layer.block (Layer.flatten --> Layer.dense 64 --> Layer.relu)
let f2 = Layer.dense 10
let program = Program.input [ 1; 8; 8 ] --> f1 --> f2 |> Program.crossEntropy
let options = { Options.defaults with Epochs = epochs; BatchSize = 32 }

let runs =
    [ for name in [ "backprop"; "extraprop" ] ->
        program |> Train.runWith (fun e -> printfn "%s epoch %d: validation %.3f" name e.Number (defaultArg e.ValidationAccuracy nan))
                                 options (Method.named name |> Method.resolve) digits ]

printfn "\n| method | test accuracy (epoch selected on validation) | selected epoch | final mean defect | s/epoch |"
printfn "|---|---|---|---|---|"
for r in runs do
    printfn "| %s | %.3f | %d | %.1e | %.2f |" r.Method r.Selected.TestAccuracy r.Selected.Number r.FinalDefect r.SecondsPerEpoch
for r in runs do printfn "%s: test accuracy %.3f" r.Method r.Selected.TestAccuracy

let plot = new ScottPlot.Plot()
for r in runs do
    let xs = [| for e in r.Epochs -> float e.Number |]
    let ys = [| for e in r.Epochs -> defaultArg e.ValidationAccuracy nan |]
    let line = plot.Add.Scatter(xs, ys)
    line.LegendText <- r.Method
plot.XLabel "epoch"
plot.YLabel "validation accuracy"
plot.Title $"UCI digits, 64-64-10 ReLU, batch 32, {epochs} epochs"
plot.ShowLegend() |> ignore
plot.SavePng(out, 640, 400) |> ignore
printfn "plot: %s" out
for r in runs do (r :> System.IDisposable).Dispose()
