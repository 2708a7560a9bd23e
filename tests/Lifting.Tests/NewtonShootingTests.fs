/// Newton multiple shooting (seed 000; issue 27 item 5): the forward states as the root of
/// H(h) = h − f(h) = 0, every segment evaluated at once per iteration, the block-triangular system
/// solved by substitution. Exact after the depth of the lifted graph, segment by segment; one
/// iteration on an affine program; as the forward pass of back-propagation and as the state
/// initialiser of multiple shooting.
module Lifting.Tests.NewtonShootingTests

open Expecto
open FsCheck
open FsCheck.FSharp
open TorchSharp
type Tensor = torch.Tensor
open Lifting
open Lifting.Programs
open Lifting.Formulations
open Lifting.Testing
open Lifting.Tests.Support

let config = { FsCheckConfig.defaultConfig with maxTest = 30; arbitrary = [] }

/// Random MLPs (even draws) and random graphs — residual MLPs with skips across cuts, Elman RNNs
/// with tied weights (odd draws).
let genProgram =
    Gen.choose (0, 100000) |> Gen.map (fun s -> if s % 2 = 0 then RandomPrograms.Mlp(s) else RandomPrograms.Graph(s / 2))

/// The value of every segment by the sequential forward pass.
let sequential (program: NestedProgram) (weights: Weights) (x: Tensor) =
    use _ = torch.no_grad()
    let segments = program.Segments
    let values = Array.zeroCreate<Tensor> segments.Count
    for v in 0 .. segments.Count - 1 do
        values.[v] <- segments.[v].Forward(segments.[v].InputsFrom(x, values), weights.Tensors)
    values

/// Largest |h_v − forward_v| per segment.
let errors (states: Tensor seq) (reference: Tensor[]) =
    states |> Seq.mapi (fun v (h: Tensor) -> (h - reference.[v]).abs().max().ToDouble()) |> Array.ofSeq

/// For k = 1 … depth (+1), the per-segment errors after k Newton iterations from zero.
let errorsByIteration (rp: RandomProgram) skipSettled =
    use weights = rp.Initialise(rp.Seed)
    let reference = sequential rp.Program weights rp.Inputs
    let depth = NewtonShooting.Depth(rp.Program)
    [ for k in 1 .. depth ->
        let r = NewtonShooting.Solve(rp.Program, weights.Tensors, rp.Inputs, k, skipSettled = skipSettled)
        r.Iterations, errors r.States reference ]

[<Tests>]
let tests =
    testList "NewtonShootingTests" [
        test "depth: a chain of L blocks has depth L; a residual graph's skip across a cut does not lengthen its longest path" {
            let chain = mlp 4L [ 5L; 5L; 5L ] 3L Activations.Tanh Losses.CrossEntropy
            Expect.equal (NewtonShooting.Depths(chain) |> List.ofArray) [ 1; 2; 3; 4 ] "chain"
            let skip =
                Net.Input(3L).Dense(4L).Tanh().Cut()
                    .Residual(fun body -> body.Dense(4L).Tanh().Cut().Dense(4L))
                    .Dense(2L).CrossEntropy()
            // x → v1 → v2 (inside the body) → output, which reads v1 too (the skip).
            Expect.equal (NewtonShooting.Depths(skip) |> List.ofArray) [ 1; 2; 3 ] "residual"
        }

        testPropertyWithConfig config "Newton multiple shooting from zero: after k iterations every segment of depth <= k is the sequential forward pass bit for bit, so all are exact at the depth (L for a chain of L segments); within 1e-6 by then (random MLPs and graphs, float64, every segment evaluated every iteration)" <|
            Prop.forAll (Arb.fromGen genProgram) (fun rp ->
                let depths = NewtonShooting.Depths(rp.Program)
                let depth = Array.max depths
                let byIteration = errorsByIteration rp false
                let exactWhereDeep =
                    byIteration |> List.mapi (fun i (_, errs) -> Array.forall2 (fun d e -> d > i + 1 || e = 0.0) depths errs) |> List.forall id
                let _, last = List.last byIteration
                let firstWithin = byIteration |> List.tryFindIndex (fun (_, errs) -> Array.max errs <= 1e-6) |> Option.map ((+) 1)
                (exactWhereDeep && Array.max last = 0.0 && firstWithin.IsSome && firstWithin.Value <= depth)
                |> Prop.label $"{rp}: depths %A{depths}, errors by iteration %A{byIteration |> List.map snd}")

        testPropertyWithConfig config "skipping the segments whose inputs are exact changes nothing: the same states after every iteration (random MLPs and graphs)" <|
            Prop.forAll (Arb.fromGen genProgram) (fun rp ->
                let full = errorsByIteration rp false |> List.map snd
                let skipping = errorsByIteration rp true |> List.map snd
                List.forall2 (fun (a: float[]) (b: float[]) -> Array.forall2 (fun x y -> abs (x - y) <= 1e-12) a b) full skipping
                |> Prop.label $"{rp}: {full} vs {skipping}")

        test "on an affine program (identity activations) one Newton iteration from any start is the forward pass: the substitution solves the linear system exactly, where a fixed-point sweep would need L" {
            for seed in 0 .. 4 do
                let program = mlp 3L [ 4L; 5L; 4L ] 2L Activations.Identity Losses.CrossEntropy
                let x, _ = randomBatch seed 4L 3L 2L
                use weights = program.Initialise(seed, torch.CPU, f64)
                let reference = sequential program weights x
                use g = new torch.Generator(uint64 (seed + 100))
                let start = reference |> Array.map (fun t -> torch.randn(t.shape, dtype = f64, generator = g))
                let r = NewtonShooting.Solve(program, weights.Tensors, x, 1, start = start, skipSettled = false)
                let err = errors r.States reference |> Array.max
                Expect.isLessThan err 1e-12 $"seed {seed}: one iteration, error {err}"
        }

        test "from the forward pass itself Newton stops after one iteration with no state moved" {
            let rp = RandomPrograms.Graph(4)
            use weights = rp.Initialise(rp.Seed)
            let reference = sequential rp.Program weights rp.Inputs
            let r = NewtonShooting.Solve(rp.Program, weights.Tensors, rp.Inputs, 10, start = reference, skipSettled = false)
            Expect.equal r.Iterations 1 "one iteration"
            Expect.equal r.Changes.[0] 0.0 "nothing moved"
        }

        testPropertyWithConfig config "newton-backprop: back substitution at the Newton states is back-propagation's gradient (relative error < 1e-10; random MLPs and graphs, float64)" <|
            Prop.forAll (Arb.fromGen genProgram) (fun rp ->
                use weights = rp.Initialise(rp.Seed)
                let d = NewtonBackprop().Direction(rp.Program, weights.Tensors, rp.Inputs, rp.Labels)
                let err = relativeError d.Gradients (backpropGradient rp.Program weights rp.Inputs rp.Labels)
                err < 1e-10 |> Prop.label $"{rp}: relative error {err}")

        test "newton-backprop with fewer iterations than the depth takes the gradient at inexact states (it differs), and refuses batch normalisation in one line" {
            let program = mlp 3L [ 4L; 4L; 4L ] 2L Activations.Tanh Losses.CrossEntropy
            let x, y = randomBatch 3 5L 3L 2L
            use weights = program.Initialise(3, torch.CPU, f64)
            let exact = backpropGradient program weights x y
            let d = NewtonBackprop(iterations = 2).Direction(program, weights.Tensors, x, y)
            Expect.isGreaterThan (relativeError d.Gradients exact) 1e-3 "two iterations on four segments are not exact"
            let bn = Net.Input(3L).Dense(4L).BatchNorm().ReLU().Cut().Dense(2L).CrossEntropy()
            let message = try NewtonBackprop().Validate(bn); "" with :? System.ArgumentException as e -> e.Message
            Expect.stringContains message "training mode" "names the mode"
        }

        test "multiple shooting with newton-init at the depth starts from the forward states; with fewer iterations the deeper states differ" {
            let rp = RandomPrograms.Graph(6)
            let depth = NewtonShooting.Depth(rp.Program)
            let states (iterations: int) =
                use weights = rp.Initialise(rp.Seed)
                let f = MultipleShooting(MultipleShootingOptions(NewtonInitialisation = iterations))
                let problem, game, _ = liftAll f rp.Program weights rp.Inputs rp.Labels rp.Classes 0 (constantRules 0.1)
                use _g = game
                use _p = problem
                [ for l in 1 .. rp.Program.Segments.Count - 1 -> problem.Store.[$"h{l}"].clone() ]
            let sequentialStates = states 0
            let newton = states depth
            let err = List.map2 (fun (a: Tensor) (b: Tensor) -> (a - b).abs().max().ToDouble()) sequentialStates newton |> List.max
            Expect.equal err 0.0 $"newton-init {depth} gives the forward states (error {err})"
            if depth > 2 then
                let short = states 1
                let err1 = List.map2 (fun (a: Tensor) (b: Tensor) -> (a - b).abs().max().ToDouble()) sequentialStates short |> List.max
                Expect.isGreaterThan err1 1e-6 "one iteration leaves the deeper states inexact"
            Expect.throwsT<System.ArgumentException> (fun () -> MultipleShootingOptions(NewtonInitialisation = 2, ForwardInitialisation = false).Validate()) "newton-init without forward initialisation" |> ignore
        }

        test "newton-backprop trains: digits 64-32-10, 3 epochs, test accuracy within 2 points of backprop's" {
            let digits = Lifting.Data.DatasetCatalog.Load "digits"
            let run name =
                let program = Net.Mlp(digits.Train.ExampleShape, [| 64L; 32L; 32L; 10L |], Activations.ReLU, Losses.CrossEntropy)
                let m = Methods.Resolve(name: string)
                use r = Lifting.Training.Trainer.Train(program, digits, m.Formulation, m.Solver, m.StepRules, Lifting.Training.TrainingOptions(Epochs = 3, BatchSize = 32, Seed = 0))
                r.Selected.TestAccuracy
            let bp, nb = run "backprop", run "newton-backprop"
            Expect.isGreaterThan nb (bp - 0.02) $"newton-backprop {nb} vs backprop {bp}"
        }
    ]
