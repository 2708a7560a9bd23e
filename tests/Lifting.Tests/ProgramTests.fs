module Lifting.Tests.ProgramTests

open System
open Expecto
open TorchSharp
open type TorchSharp.torch
open Lifting.Programs
open Lifting.FSharp
open Lifting.Tests.Support

/// Central finite differences of the mean loss in every parameter coordinate (float64).
let finiteDifferenceGradient (program: NestedProgram) (weights: Weights) (x: Tensor) (y: Tensor) =
    use _ = no_grad()
    let h = 1e-6
    let lossAt () = program.Loss.PerExample(program.Forward(x, weights.Tensors), y).mean().ToDouble()
    weights.Tensors
    |> Seq.map (fun w ->
        let flat = w.view(-1L)
        let g = zeros_like(flat)
        for i in 0L .. flat.shape.[0] - 1L do
            let v = flat.[i].ToDouble()
            flat.[i] <- tensor(v + h, dtype = f64)
            let up = lossAt ()
            flat.[i] <- tensor(v - h, dtype = f64)
            let down = lossAt ()
            flat.[i] <- tensor(v, dtype = f64)
            g.[i] <- tensor((up - down) / (2.0 * h), dtype = f64)
        g.view(w.shape))
    |> Array.ofSeq

let gradientCheck name (program: NestedProgram) (x: Tensor) (y: Tensor) =
    test name {
        use weights = program.Initialise(7, CPU, f64)
        let analytic = backpropGradient program weights x y
        let numeric = finiteDifferenceGradient program weights x y
        let err = relativeError analytic numeric
        Expect.isLessThan err 1e-6 $"relative error of the gradient against finite differences: {err}"
    }

[<Tests>]
let tests =
    testList "ProgramTests" [
        test "Net builder reads from F#: shapes, blocks and default cuts" {
            let program = Net.Input(1L, 8L, 8L).Flatten().Dense(32L).ReLU().Dense(16L).Tanh().Dense(10L).CrossEntropy()
            Expect.equal program.Blocks.Count 3 "cut after each hidden activation"
            Expect.sequenceEqual program.OutputShape [| 10L |] "output shape"
            Expect.equal program.ParameterCount (64L*32L + 32L + 32L*16L + 16L + 16L*10L + 10L) "parameter count"
        }
        test "explicit cuts replace the default" {
            let program = Net.Input(4L).Dense(8L).ReLU().Dense(8L).ReLU().Cut().Dense(3L).Mse()
            Expect.equal program.Blocks.Count 2 "one explicit cut gives two blocks"
        }
        test "shape mismatches are reported with the shapes" {
            let ex = Expect.throwsC (fun () -> Net.Input(1L, 8L, 8L).Dense(3L) |> ignore) id
            Expect.stringContains ex.Message "1×8×8" "the message names the shape received"
            Expect.stringContains ex.Message "Flatten" "the message says what to do"
            let ex2 = Expect.throwsC (fun () -> Net.Mlp([| 64L |], [| 784L; 10L |], Activations.ReLU, Losses.CrossEntropy) |> ignore) id
            Expect.stringContains ex2.Message "784" "the message names the bad size"
            Expect.stringContains ex2.Message "64" "and the data's size"
        }
        test "NetSpec builds MLPs by sizes, zoo networks by name and conv nets from a layer list" {
            let mlp = NetSpec.Build("784-256-10", [| 1L; 28L; 28L |], 10, Activations.Tanh, Losses.CrossEntropy)
            Expect.equal mlp.Blocks.Count 2 "one hidden layer: two blocks"
            Expect.equal mlp.ParameterCount (784L * 256L + 256L + 2570L) "784-256-10 parameters"
            let lenet = NetSpec.Build("lenet5", [| 1L; 28L; 28L |], 10, Activations.ReLU, Losses.CrossEntropy)
            Expect.equal lenet.ParameterCount (156L + 2416L + 48120L + 10164L + 850L) "LeNet-5's 61,706 parameters"
            Expect.equal lenet.Blocks.Count 5 "cut after each hidden activation"
            let seed001 = NetSpec.Build("seed001-conv", [| 1L; 28L; 28L |], 10, Activations.ReLU, Losses.CrossEntropy)
            Expect.equal seed001.Blocks.Count 2 "one cut, after the convolutions"
            Expect.sequenceEqual seed001.Blocks.[0].OutputShape [| 16L; 5L; 5L |] "the feature extractor's output"
            let listed = NetSpec.Build("conv:4:3:1:1, relu, maxpool:2, cut, dense:16, tanh, dense:10", [| 1L; 8L; 8L |], 10, Activations.ReLU, Losses.Mse)
            Expect.equal listed.Blocks.Count 2 "the explicit cut alone"
            Expect.sequenceEqual listed.Blocks.[0].OutputShape [| 4L; 4L; 4L |] "padded conv keeps 8×8, pooling halves it"
            Expect.equal listed.Loss.Name "mse" "the given loss"
            use w = listed.Initialise(1)
            Expect.sequenceEqual (listed.Forward(ones(3L, 1L, 8L, 8L), w.Tensors).shape) [| 3L; 10L |] "runs"
        }
        test "NetSpec errors name the bad part" {
            let fails (spec: string) (fragment: string) =
                let ex = Expect.throwsC (fun () -> NetSpec.Build(spec, [| 1L; 8L; 8L |], 10, Activations.ReLU, Losses.CrossEntropy) |> ignore) id
                Expect.stringContains ex.Message fragment $"{spec}: {ex.Message}"
            fails "64-0-10" "'0'"
            fails "784-10" "784"
            fails "64-32-7" "10 classes"
            fails "resnet" "resnet"
            fails "conv:4:30, dense:10" "conv:4:30"
            fails "conv:4, dense:10" "kernel size"
            fails "swish, dense:10" "swish"
            fails "dense:16, relu" "10 classes"
        }
        test "same seed gives identical weights; different seeds differ" {
            let program = mlp 5L [ 7L ] 3L Activations.ReLU Losses.CrossEntropy
            use a = program.Initialise(3)
            use b = program.Initialise(3)
            use c = program.Initialise(4)
            for (u, v) in Seq.zip a.Tensors b.Tensors do Expect.equal ((u - v).abs().max().ToDouble()) 0.0 "same seed"
            Expect.isFalse (Seq.forall2 (fun (u: Tensor) (v: Tensor) -> (u - v).abs().max().ToDouble() = 0.0) a.Tensors c.Tensors) "different seed"
        }
        let x, y = randomBatch 1 6L 5L 3L
        gradientCheck "MLP relu/cross-entropy gradient equals finite differences (float64)"
            (mlp 5L [ 4L; 4L ] 3L Activations.ReLU Losses.CrossEntropy) x y
        gradientCheck "MLP tanh/cross-entropy gradient equals finite differences (float64)"
            (mlp 5L [ 4L; 4L ] 3L Activations.Tanh Losses.CrossEntropy) x y
        gradientCheck "MLP sigmoid/MSE gradient equals finite differences (float64)"
            (mlp 5L [ 4L ] 3L Activations.Sigmoid Losses.Mse) x y
        test "conv/pool program gradient equals finite differences (float64)" {
            use g = new Generator(5UL)
            let x = randn([| 2L; 1L; 6L; 6L |], dtype = f64, generator = g)
            let y = tensor([| 0L; 2L |])
            let program = Net.Input(1L, 6L, 6L).Conv2d(2L, 3L).Tanh().AvgPool2d(2L).Flatten().Dense(3L).CrossEntropy()
            use weights = program.Initialise(2, CPU, f64)
            let err = relativeError (backpropGradient program weights x y) (finiteDifferenceGradient program weights x y)
            Expect.isLessThan err 1e-6 $"relative error {err}"
        }
        test "convex potentials: Fenchel–Young gap is >= 0 and zero at z = σ(a)" {
            use g = new Generator(11UL)
            let a = randn([| 4L; 5L |], dtype = f64, generator = g) * 2.0
            for act in Activations.All do
                let p = match act.Potential with null -> failtest $"{act.Name} has no potential" | p -> p
                let z = act.Apply(a)
                let gapAt (z: Tensor) = p.G(z) + p.Conjugate(a) - (z * a).sum(1L)
                let tight = gapAt z
                Expect.isLessThan (tight.abs().max().ToDouble()) 1e-6 $"{act.Name}: gap at z = σ(a) is zero"
                let other = act.Reparametrise(randn([| 4L; 5L |], dtype = f64, generator = g))
                Expect.isGreaterThanOrEqual (gapAt(other).min().ToDouble()) -1e-9 $"{act.Name}: gap is non-negative"
        }
        test "activations report their ranges and reparametrise into them" {
            use g = new Generator(3UL)
            let u = randn([| 100L |], dtype = f64, generator = g) * 3.0
            for act in Activations.All do
                let h = act.Reparametrise(u)
                let r = act.Range
                Expect.isGreaterThanOrEqual (h.min().ToDouble()) r.Lower $"{act.Name} lower bound"
                Expect.isLessThanOrEqual (h.max().ToDouble()) r.Upper $"{act.Name} upper bound"
        }
        test "a custom layer from F# joins a program, has finite-difference-exact gradients and trains through the lifted engine" {
            // A diagonal scaling layer f(h; s) = s ⊙ h with its own parameter and initialiser.
            let scale (shape: int64[]) =
                { new ILayer with
                    member _.Name = "scale"
                    member _.InputShape = shape
                    member _.OutputShape = shape
                    member _.Parameters =
                        [| ParameterSpec("s", shape, Initialiser(fun sh _ dtype device -> ones(sh, dtype = dtype, device = device))) |] :> _
                    member _.Forward(input, parameters) = input * parameters.[0] }
            let program = Program.input [ 4 ] --> Layer.dense 5 --> Layer.tanh --> Layer.custom "scale" scale --> Layer.cut --> Layer.dense 3 |> Program.crossEntropy
            Expect.equal program.Blocks.Count 2 "explicit cut"
            use w = program.Initialise(2, CPU, f64)
            Expect.equal w.Tensors.Count 5 "dense (2) + scale (1) + dense (2)"
            let x, y = randomBatch 4 5L 4L 3L
            let err = relativeError (backpropGradient program w x y) (finiteDifferenceGradient program w x y)
            Expect.isLessThan err 1e-6 $"gradient through the custom layer: relative error {err}"
            // The lifted engine: multiple shooting cut after the custom layer, extragradient steps.
            let problem, game, _ = liftAll (Lifting.Formulations.MultipleShooting()) program w x y 3 0 (constantRules 0.05)
            use _p = problem
            use _g = game
            let lossOf () = program.Loss.PerExample(program.Forward(x, w.Tensors), y).mean().ToDouble()
            let before = lossOf ()
            let scale = w.Tensors.[2].clone()
            for _ in 1 .. 50 do Lifting.Solvers.Solvers.Extragradient().Step(game)
            Expect.isLessThan (lossOf ()) before "the lifted problem lowers the loss"
            Expect.isGreaterThan ((w.Tensors.[2] - scale).abs().max().ToDouble()) 0.0 "the custom layer's parameter was trained"
        }
        test "a custom activation from F# joins a program without touching the engine" {
            let softsign =
                { new IActivation with
                    member _.Name = "softsign"
                    member _.Range = ActivationRange(-1.0, 1.0)
                    member _.Differentiable = true
                    member _.Potential = null
                    member _.Apply(x) = x / (x.abs() + 1.0)
                    member _.Reparametrise(u) = u / (u.abs() + 1.0)
                    member _.Preimage(h) = h / (1.0 - h.abs()) }
            let program = Program.input [ 3 ] --> Layer.dense 4 --> Layer.activation softsign --> Layer.dense 2 |> Program.crossEntropy
            use w = program.Initialise(1)
            let out = program.Forward(ones(5L, 3L), w.Tensors)
            Expect.sequenceEqual out.shape [| 5L; 2L |] "output shape"
        }
    ]
