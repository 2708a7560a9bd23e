/// The F# surface (src/Lifting.FSharp): networks as composable values, settings as records,
/// training as a pipeline, results with options.
module Lifting.Tests.FSharpTests

open Expecto
open Lifting
open Lifting.Programs
open Lifting.FSharp

let digits = lazy (Data.load "digits")

[<Tests>]
let tests =
    testList "FSharpTests" [
        test "pieces composed with --> build the same program as the builder, nesting levels included" {
            let f1 = Layer.block (Layer.flatten --> Layer.dense 32 --> Layer.relu)
            let f2 = Layer.block (Layer.dense 16 --> Layer.tanh)
            let composed = Program.input [ 1; 8; 8 ] --> f1 --> f2 --> Layer.dense 10 |> Program.crossEntropy
            let built = Net.Input(1L, 8L, 8L).Flatten().Dense(32L).ReLU().Cut().Dense(16L).Tanh().Cut().Dense(10L).CrossEntropy()
            Expect.equal (string composed) (string built) "same blocks and layers"
            Expect.equal (Program.describe composed).Length 3 "three nesting levels f1, f2, f3"
        }
        test "graph pieces: a residual MLP and an Elman RNN composed with --> are the builder's programs (same segments and parameter names)" {
            let residual = Program.input [ 1; 8; 8 ] --> Layer.flatten --> Layer.dense 16 --> Layer.relu --> Layer.residual (Layer.dense 16 --> Layer.relu --> Layer.dense 16) --> Layer.dense 10 |> Program.crossEntropy
            let built = Net.Input(1L, 8L, 8L).Flatten().Dense(16L).ReLU().Residual(fun b -> b.Dense(16L).ReLU().Dense(16L)).Dense(10L).CrossEntropy()
            Expect.equal (string residual) (string built) "the same segments"
            Expect.equal (List.ofSeq residual.ParameterNames) (List.ofSeq built.ParameterNames) "the same names"
            Expect.equal (Program.describe residual).Length 3 "cut after the relu and after the block"
            let rnn = Program.input [ 1; 8; 8 ] --> Layer.elman 16 --> Layer.dense 10 |> Program.crossEntropy
            Expect.equal (Program.describe rnn).Length 9 "eight steps (rows) and the read-out"
            Expect.equal (List.ofSeq rnn.ParameterNames |> List.take 3) [ "rnn1.cell.input.weight"; "rnn1.cell.input.bias"; "rnn1.cell.recurrent.weight" ] "tied W, b, U"
            let cell = Layer.share "cell" (Layer.dense 8 --> Layer.tanh)
            let twice = Program.input [ 8 ] --> Layer.shared cell --> Layer.shared cell --> Layer.batchNorm --> Layer.dropout 0.1 --> Layer.dense 3 |> Program.crossEntropy
            Expect.equal (twice.ParameterNames |> Seq.filter (fun n -> n.StartsWith "cell.") |> Seq.length) 2 "one weight and bias for both uses"
            Expect.equal twice.BufferNames.Count 2 "batch normalisation's running statistics"
        }
        test "--> is associative and folds over a list without annotations" {
            let sizes = [ 32; 16 ]
            let hidden = sizes |> List.map (fun n -> Layer.dense n --> Layer.relu) |> List.reduce (-->)
            let a = Program.input [ 64 ] --> hidden --> Layer.dense 10 |> Program.crossEntropy
            let b = Program.input [ 64 ] --> (Layer.dense 32 --> (Layer.relu --> Layer.dense 16)) --> Layer.relu --> Layer.dense 10 |> Program.crossEntropy
            Expect.equal (string a) (string b) "the same program"
            Expect.equal (string (Layer.concat [ Layer.dense 3; Layer.relu ])) "dense 3 --> relu" "a piece shows its layers"
        }
        test "a bad piece fails with the builder's message naming the shapes" {
            let ex = Expect.throwsC (fun () -> Program.input [ 1; 8; 8 ] --> Layer.dense 10 |> Program.crossEntropy |> ignore) id
            Expect.stringContains ex.Message "Flatten" "says what to add"
        }
        test "options (dtype included) and method specs copy and update; Method.set formats values invariantly; unknown parameters are refused by name" {
            let options = { Options.defaults with Epochs = 2 }
            Expect.equal options.BatchSize (Lifting.Training.TrainingOptions().BatchSize) "other fields keep their defaults"
            Expect.equal (Options.toCore options).Epochs 2 "the C# options carry the change"
            Expect.equal (Options.toCore { options with DType = TorchSharp.torch.ScalarType.Float64 }).DType TorchSharp.torch.ScalarType.Float64 "and the dtype"
            let spec = Method.named "extraprop" |> Method.set "lr" 0.005 |> Method.set "reduced" true
            Expect.equal spec.Values.["lr"] "0.005" "invariant number"
            Expect.equal (Method.resolve spec).Arguments.Method.Name "extraprop" "resolves"
            let ex = Expect.throwsC (fun () -> Method.named "extraprop" |> Method.set "momentum" 0.9 |> Method.resolve |> ignore) id
            Expect.stringContains ex.Message "momentum" "names the unknown parameter"
        }
        test "the F# options name every setting of the C# TrainingOptions, start at its defaults and carry each one across" {
            let csharp = typeof<Lifting.Training.TrainingOptions>.GetProperties() |> Array.filter (fun p -> p.CanWrite) |> Array.map (fun p -> p.Name) |> Set.ofArray
            let fsharp = Microsoft.FSharp.Reflection.FSharpType.GetRecordFields(typeof<Options>) |> Array.map (fun p -> p.Name) |> Set.ofArray
            Expect.equal (Set.difference csharp fsharp) Set.empty "settings of TrainingOptions the F# record lacks"
            Expect.equal (Options.toCore Options.defaults) (Lifting.Training.TrainingOptions()) "the defaults are the C# defaults"
            let edited =
                { Options.defaults with
                    Epochs = 3; BatchSize = 7; Seed = 5; IterationsPerBatch = 2; Patience = 4; CosineToBackprop = true
                    MaxLossRatio = 50.0; Selection = Lifting.Training.Selection.LastEpoch; DType = TorchSharp.torch.ScalarType.Float64 }
            let changed = Options.toCore edited
            for p in typeof<Lifting.Training.TrainingOptions>.GetProperties() |> Array.filter (fun p -> p.CanWrite && p.Name <> "Device") do
                Expect.notEqual (p.GetValue(changed)) (p.GetValue(Lifting.Training.TrainingOptions())) $"{p.Name} is carried to the C# options"
        }
        test "Train.run on digits: epochs are F# records with options (validation present, cosine absent) and the selected epoch is the best on validation" {
            let program = Program.input [ 1; 8; 8 ] --> Layer.flatten --> Layer.dense 32 --> Layer.relu --> Layer.dense 10 |> Program.crossEntropy
            use run = program |> Train.run { Options.defaults with Epochs = 4; BatchSize = 32 } (Method.named "backprop" |> Method.resolve) (digits.Force())
            Expect.equal run.Epochs.Length 4 "one record per epoch"
            let validation = run.Epochs |> List.map (fun e -> e.ValidationAccuracy)
            Expect.isTrue (validation |> List.forall Option.isSome) "every epoch has a validation accuracy"
            Expect.isTrue (run.Epochs |> List.forall (fun e -> e.CosineToBackprop.IsNone)) "the cosine was not asked for"
            let best = validation |> List.choose id |> List.max
            Expect.equal run.Selected.ValidationAccuracy (Some best) "the selected epoch has the best validation accuracy"
            Expect.isGreaterThan run.Selected.TestAccuracy 0.85 "four epochs of Adam learn digits"
        }
        test "Train.runWith reports every epoch, with the lifted method's defects" {
            let seen = ResizeArray<Epoch>()
            let program = Program.mlp [ 1; 8; 8 ] [ 64; 32; 10 ] Activations.ReLU
            use run = program |> Train.runWith seen.Add { Options.defaults with Epochs = 2; BatchSize = 64 } (Method.named "penalty" |> Method.resolve) (digits.Force())
            Expect.equal (List.ofSeq seen) run.Epochs "the observer saw the run's epochs"
            Expect.isTrue (run.Epochs |> List.forall (fun e -> e.Defects.Length = 1)) "one hidden state, one defect per epoch"
        }
    ]
