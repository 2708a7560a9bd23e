/// Deeply supervised nets (Lee et al. 2015; seed 000): a linear companion classifier per cut, the
/// network trained by back-propagation on ℓ + Σ_l λ_l ℓ(head_l(h_l)) with λ annealed to 0. With
/// λ = 0 it is back-propagation; the heads' gradients are their own losses'; the schedule and the
/// heads are checkpointed state.
module Lifting.Tests.DeeplySupervisedTests

open System
open System.IO
open System.Text.Json
open Expecto
open FsCheck
open FsCheck.FSharp
open TorchSharp
type Tensor = torch.Tensor
open Lifting
open Lifting.Programs
open Lifting.Formulations
open Lifting.Training
open Lifting.Tests.Support

let config = { FsCheckConfig.defaultConfig with maxTest = 40; arbitrary = [] }

/// Lifts a DSN with companion weights `lambda` (no annealing) over (x, y); returns the problem and
/// the directions of the weights and of the heads on the batch holding every example.
let directions (lambda: float list) (program: NestedProgram) (weights: Weights) (x: Tensor) (y: Tensor) =
    let classes = int program.OutputShape.[0]
    let problem, game, _ = liftAll (DeeplySupervised(Array.ofList lambda, 0)) program weights x y classes 0 (constantRules 0.1)
    use _ = game
    let p = problem :?> DeeplySupervisedProblem
    let d = game.Operator(game.Players)
    p, Array.ofSeq d.[0], Array.ofSeq d.[1]

/// Random MLPs with λ per cut in [0.1, 2].
let genWithLambda =
    gen {
        let! m = genReluTanhMlp
        let! lambda = Gen.listOfLength m.Hidden.Length (Gen.choose (1, 20) |> Gen.map (fun k -> float k / 10.0))
        return m, lambda
    }

[<Tests>]
let tests =
    testList "DeeplySupervisedTests" [
        testPropertyWithConfig config "with every lambda = 0 the weights' direction is back-propagation's gradient (relative error < 1e-10) and the heads' is 0, on random ReLU and tanh MLPs" <|
            Prop.forAll (Arb.fromGen genReluTanhMlp) (fun m ->
                let program = m.Program
                let x, y = randomBatch m.Seed m.Batch m.Inputs m.Classes
                use weights = program.Initialise(m.Seed, torch.CPU, f64)
                let p, w, heads = directions [ 0.0 ] program weights x y
                use _ = p
                let err = relativeError w (backpropGradient program weights x y)
                let headNorm = heads |> Array.sumBy (fun t -> t.abs().sum().ToDouble())
                (err < 1e-10 && headNorm = 0.0 && heads.Length = 2 * m.Hidden.Length) |> Prop.label $"relative error {err}, heads {headNorm}")

        testPropertyWithConfig config "with lambda > 0 each head's direction is lambda_l times the gradient of its own mean loss, and the weights' is backprop's gradient plus sum_l lambda_l grad_w of the companion losses (relative error < 1e-10)" <|
            Prop.forAll (Arb.fromGen genWithLambda) (fun (m, lambda) ->
                let program = m.Program
                let x, y = randomBatch m.Seed m.Batch m.Inputs m.Classes
                use weights = program.Initialise(m.Seed, torch.CPU, f64)
                let p, w, heads = directions lambda program weights x y
                use _ = p
                let v = p.HeadVariables
                // Each head on its own: the gradient of λ_l · mean ℓ(V_l h_l + c_l) in (V_l, c_l), h_l a fixed forward value.
                let states =
                    use _ = torch.no_grad()
                    program.ForwardStates(x, weights.Tensors)
                let ownHeads =
                    [| for l, lam in List.indexed lambda do
                         use _ = torch.enable_grad()
                         let loss = program.Loss.PerExample(torch.nn.functional.linear(states.[l].detach(), v.[2 * l], v.[2 * l + 1]), y).mean()
                         yield! torch.autograd.grad([| lam * loss |], [| v.[2 * l]; v.[2 * l + 1] |]) |]
                // The weights: the whole objective by autograd, from the program's forward states.
                let whole =
                    use _ = torch.enable_grad()
                    let states = program.ForwardStates(x, weights.Tensors)
                    let companions = [ for l, lam in List.indexed lambda -> lam * program.Loss.PerExample(torch.nn.functional.linear(states.[l], v.[2 * l], v.[2 * l + 1]), y).mean() ]
                    let total = List.fold (fun (a: Tensor) (b: Tensor) -> a + b) (program.Loss.PerExample(states.[states.Count - 1], y).mean()) companions
                    torch.autograd.grad([| total |], weights.Tensors |> Array.ofSeq)
                let headErr = relativeError heads ownHeads
                let weightErr = relativeError w whole
                (headErr < 1e-10 && weightErr < 1e-10) |> Prop.label $"heads {headErr}, weights {weightErr}")

        test "lambda falls linearly to 0 over `anneal` epochs, per cut; anneal = 0 keeps it; the completed epochs are a checkpoint scalar; diagnostics give the lambda each epoch used and the angles" {
            let data = TrainingTests.digits.Force()
            let program = Net.Mlp(data.Train.ExampleShape, [| 64L; 16L; 16L; 10L |], Activations.ReLU, Losses.CrossEntropy)
            let lift (f: DeeplySupervised) =
                let context = LiftContext(program, data.Train, torch.CPU, f64, 0, constantRules 0.1, 0)
                f.Lift(context, program.Initialise(0, torch.CPU, f64)) :?> DeeplySupervisedProblem
            use p = lift (DeeplySupervised([| 0.5; 1.0 |], 4))
            let close (a: float seq) (b: float list) = Seq.forall2 (fun (u: float) v -> abs (u - v) < 1e-12) a b
            Expect.isTrue (close p.Lambda [ 0.5; 1.0 ]) "epoch 1: the initial values"
            for epoch, expected in [ 1, [ 0.375; 0.75 ]; 2, [ 0.25; 0.5 ]; 3, [ 0.125; 0.25 ]; 4, [ 0.0; 0.0 ]; 7, [ 0.0; 0.0 ] ] do
                p.EndEpoch epoch
                Expect.isTrue (close p.Lambda expected) $"after epoch {epoch}: {List.ofSeq p.Lambda}"
            p.EndEpoch 2
            Expect.equal ((p :> ICheckpointable).StateScalars.["completed-epochs"]) 2.0 "the schedule's state"
            let d = p.Diagnostics
            Expect.sequenceEqual d.Keys [ "lambda-1"; "lambda-2"; "angle-1"; "angle-2"; "angle-3" ] "lambda per cut, angle per layer"
            Expect.isTrue (close [ d.["lambda-1"]; d.["lambda-2"] ] [ 0.375; 0.75 ]) "the lambda epoch 2 used"
            Expect.isLessThan d.["angle-3"] 1e-5 "the top layer follows its own loss alone"
            Expect.isGreaterThan d.["angle-1"] 1e-3 "the companions tilt the first layer"
            use q = lift (DeeplySupervised([| 0.5; 1.0 |], 4))
            (q :> ICheckpointable).RestoreScalars(readOnlyDict [ "completed-epochs", 2.0 ])
            Expect.isTrue (close q.Lambda [ 0.25; 0.5 ]) "restored from the checkpoint scalar"
            let e = Expect.throwsC (fun () -> (q :> ICheckpointable).RestoreScalars(readOnlyDict [ "completed-epochs", 1.5 ])) id
            Expect.stringContains e.Message "completed-epochs in the checkpoint: 1.5" "names the bad value"
            use c = lift (DeeplySupervised([| 0.3 |], 0))
            c.EndEpoch 50
            Expect.isTrue (close c.Lambda [ 0.3; 0.3 ]) "anneal = 0: constant, one value for every cut"
        }

        test "the heads are a second player of shared variables with their step state, saved in checkpoints; they learn while evaluation ignores them" {
            let program = mlp 6L [ 9L; 8L ] 3L Activations.ReLU Losses.CrossEntropy
            let x, y = randomBatch 4 20L 6L 3L
            let rules = Func<string, Lifting.Solvers.IStepRule>(fun _ -> Lifting.Solvers.StepRules.Adam(0.01))
            let context = LiftContext(program, dataset x y 3, torch.CPU, f64, 0, rules, 0)
            use weights = program.Initialise(0, torch.CPU, f64)
            use p = DeeplySupervised([| 1.0 |], 0).Lift(context, weights) :?> DeeplySupervisedProblem
            Expect.sequenceEqual [ for t in p.HeadVariables -> List.ofArray t.shape ] [ [ 3L; 9L ]; [ 3L ]; [ 3L; 8L ]; [ 3L ] ] "a linear head [classes, width] per cut"
            let state = (p :> ICheckpointable).StateTensors
            for name in [ "head1.weight"; "head1.bias"; "head2.weight"; "head2.bias" ] do
                Expect.isTrue (state.ContainsKey $"shared/{name}") $"{name} is checkpointed"
                Expect.isTrue (state.ContainsKey $"shared/{name}#slot0") $"{name}'s Adam moments are checkpointed"
            let before = [ for t in p.HeadVariables -> t.detach().clone() ]
            let headLoss () =
                use _ = torch.no_grad()
                let h = program.ForwardStates(x, weights.Tensors).[0]
                program.Loss.PerExample(torch.nn.functional.linear(h, p.HeadVariables.[0], p.HeadVariables.[1]), y).mean().ToDouble()
            let start = headLoss ()
            let batch = new Lifting.Data.MiniBatch(torch.arange(20L, dtype = torch.int64), x, y)
            let solver = Solvers.Solvers.GradientDescentAscent()
            for _ in 1 .. 50 do
                use game = p.Batch(batch)
                Expect.sequenceEqual [ for pl in game.Players -> pl.Name ] [ "weights"; "heads" ] "two players"
                solver.Step(game)
            Expect.isGreaterThan (relativeError (Array.ofSeq p.HeadVariables) before) 1e-3 "the heads move"
            Expect.isLessThan (headLoss ()) start "the first head's loss falls"
            Expect.equal (program.Forward(x, weights.Tensors).shape) [| 20L; 3L |] "the program itself has no heads"
        }

        test "a program without a cut and a wrong number of lambda values are refused, naming them" {
            let oneBlock = Net.Input(4L).Dense(3L).CrossEntropy()
            let e = Expect.throwsC (fun () -> DeeplySupervised.WeightsPerCut(oneBlock, [| 0.3 |]) |> ignore) id
            Expect.stringContains e.Message "at least one cut" "no cut"
            let program = mlp 4L [ 5L; 6L ] 3L Activations.ReLU Losses.CrossEntropy
            let e = Expect.throwsC (fun () -> DeeplySupervised.WeightsPerCut(program, [| 0.3; 0.2; 0.1 |]) |> ignore) id
            Expect.stringContains e.Message "3 values for a program of 2 cuts" "the count"
            let e = Expect.throwsC (fun () -> DeeplySupervised([| -0.1 |], 3) |> ignore) id
            Expect.stringContains e.Message "Invalid lambda: -0.1" "a negative lambda"
            let e = Expect.throwsC (fun () -> Methods.Resolve(MethodSettings("dsn").With("anneal", -1)) |> ignore) id
            Expect.stringContains e.Message "anneal" "a negative horizon"
        }

        test "dsn is in the catalog, its own family deeply-supervised, Adam lr 1e-3 on weights and heads, lambda 0.3 annealed over 10 epochs" {
            let m = Methods.Resolve "dsn"
            Expect.equal (Methods.Find "dsn").Family "deeply-supervised" "family"
            for key, value in [ "optimizer", "adam"; "lr", "0.001"; "optimizer-heads", "adam"; "lr-heads", "0.001"; "lambda", "0.3"; "anneal", "10" ] do
                Expect.equal (m.Arguments.Text key) value $"{key}"
            Expect.sequenceEqual m.Formulation.PlayerNames [ "weights"; "heads" ] "players"
        }

        // Measured (test accuracy at the validation-selected epoch, seed 0): 64-128-10 0.914
        // (backprop 0.914); 64-32-32-32-10, three cuts, 0.844 (backprop 0.799).
        test "lifting train --data digits --method dsn --epochs 5 reaches 0.88 on 64-128-10 and 0.81 on 64-32-32-32-10, logging lambda-L per cut" {
            for net, floor, cuts in [ "64-128-10", 0.88, 1; "64-32-32-32-10", 0.81, 3 ] do
                let accuracy, metrics = FeedbackAlignmentTests.trainOnDigits [ "--method"; "dsn"; "--net"; net; "--epochs"; "5" ]
                Expect.isGreaterThanOrEqual accuracy floor $"{net}: test accuracy {accuracy}"
                use doc = JsonDocument.Parse(metrics.[1])
                let diagnostics = doc.RootElement.GetProperty("diagnostics")
                for l in 1 .. cuts do
                    Expect.floatClose Accuracy.high (diagnostics.GetProperty($"lambda-{l}").GetDouble()) 0.27 $"{net}: epoch 2 used lambda-{l} = 0.3 (1 - 1/10)"
        }

        test "resume equivalence: dsn (heads, their Adam moments and the lambda schedule) interrupted mid-epoch and after epoch 1 ends bit for bit as the uninterrupted run" {
            let settings = [ "--method"; "dsn"; "--anneal"; "2"; "--net"; "64-16-16-10"; "--epochs"; "3"; "--device"; "cpu" ]
            HostTests.resumeEquivalence settings HostTests.afterFirstBatch
            HostTests.resumeEquivalence settings (HostTests.afterEpoch 1)
        }
    ]
