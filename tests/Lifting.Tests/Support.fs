/// Shared helpers for the tests: float64 tensors, random programs, comparisons.
module Lifting.Tests.Support

open System
open FsCheck.FSharp
open TorchSharp
open type TorchSharp.torch
open Lifting.Programs

let f64 = ScalarType.Float64

/// One folder per test run for the files tests write, deleted when the run ends (a run that is
/// killed leaves it behind, under its own name).
let private scratchRoot =
    lazy (
        let root = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"lifting-test-run-{Environment.ProcessId}-{Guid.NewGuid():N}")
        System.IO.Directory.CreateDirectory root |> ignore
        AppDomain.CurrentDomain.ProcessExit.Add(fun _ -> try System.IO.Directory.Delete(root, true) with _ -> ())
        root)

/// A new empty folder for one test's files, inside this run's folder.
let scratchDir (prefix: string) =
    let d = System.IO.Path.Combine(scratchRoot.Force(), prefix + "-" + Guid.NewGuid().ToString("N"))
    System.IO.Directory.CreateDirectory d |> ignore
    d

/// Relative error ‖a − b‖ / max(‖b‖, tiny) over lists of tensors.
let relativeError (a: Tensor seq) (b: Tensor seq) =
    let a = a |> Seq.map (fun t -> t.flatten()) |> Array.ofSeq
    let b = b |> Seq.map (fun t -> t.flatten()) |> Array.ofSeq
    let da = cat(a, 0L)
    let db = cat(b, 0L)
    (da - db).norm().ToDouble() / Math.Max(db.norm().ToDouble(), 1e-30)

let scalar (t: Tensor) = t.ToDouble()

/// A random batch of inputs and labels, float64, from a seed.
let randomBatch (seed: int) (batch: int64) (inputs: int64) (classes: int64) =
    use g = new Generator(uint64 seed)
    let x = randn([| batch; inputs |], dtype = f64, generator = g)
    let y = randint(classes, [| batch |], generator = g)
    x, y

/// A random MLP: input size, hidden sizes, classes, activation.
let mlp (inputs: int64) (hidden: int64 list) (classes: int64) (activation: IActivation) (loss: ILoss) =
    let sizes = [ inputs ] @ hidden @ [ classes ] |> Array.ofList
    Net.Mlp([| inputs |], sizes, activation, loss)

/// Back-propagation gradient of the mean loss.
/// The mean loss of the plain forward pass.
let forwardLoss (program: NestedProgram) (weights: Weights) (x: Tensor) (y: Tensor) =
    use _ = torch.no_grad()
    program.Loss.PerExample(program.Forward(x, weights.Tensors), y).mean().ToDouble()

let backpropGradient (program: NestedProgram) (weights: Weights) (x: Tensor) (y: Tensor) =
    use _ = enable_grad()
    let loss = program.Loss.PerExample(program.Forward(x, weights.Tensors), y).mean()
    autograd.grad([| loss |], weights.Tensors |> Array.ofSeq) |> Array.ofSeq

/// The smallest |pre-activation| of any hidden unit in the forward pass on x: how close the
/// pass is to a ReLU kink. (The programs of `mlp`: a hidden block is a linear layer, then its
/// activation.)
let kinkMargin (program: NestedProgram) (weights: Weights) (x: Tensor) =
    use _ = no_grad()
    let states = program.ForwardStates(x, weights.Tensors)
    [ for l in 0 .. program.Blocks.Count - 2 ->
        let linear = program.Blocks.[l].Layers.[0]
        let w = program.BlockWeights(weights.Tensors, l) |> Seq.take linear.Parameters.Count |> Array.ofSeq
        linear.Forward((if l = 0 then x else states.[l - 1]), w).abs().min().ToDouble() ]
    |> List.min

/// A dataset over given inputs and labels (for lifting tiny programs in tests).
let dataset (x: Tensor) (y: Tensor) (classes: int) =
    new Lifting.Data.Dataset("test", x, y, classes)

/// A fixed step rule for every player (tests).
let constantRules (lr: float) = System.Func<string, Lifting.Solvers.IStepRule>(fun _ -> Lifting.Solvers.StepRules.Constant(lr))

/// Lifts `program` over (x, y) with the given formulation and returns the problem and the game
/// of the batch holding every example.
let liftAll (formulation: Lifting.Formulations.IFormulation) (program: NestedProgram) (weights: Weights) (x: Tensor) (y: Tensor) (classes: int) memorySlots rules =
    let data = dataset x y classes
    let context = Lifting.Formulations.LiftContext(program, data, CPU, f64, 0, rules, memorySlots)
    let problem = formulation.Lift(context, weights)
    let n = x.shape.[0]
    let batch = new Lifting.Data.MiniBatch(arange(n, dtype = ScalarType.Int64), x, y)
    problem, problem.Batch(batch), batch

open Lifting.Formulations
open Lifting.Solvers

/// What a `Recording` formulation saw: the example indices of every mini-batch, by epoch; the
/// players named in every operator evaluation; per mini-batch (in the order of `Batches`), how many
/// operator evaluations its game made and whether it was committed; and, when `KeepValues` is set,
/// a copy of every player's variables at each evaluation (in the order of `Requests`).
type Log() =
    member val Epoch = 1 with get, set
    member val Batches = ResizeArray<int * int64[]>()
    member val Requests = ResizeArray<int * string[]>()
    member val Evaluations = ResizeArray<int>()
    member val Committed = ResizeArray<bool>()
    member val KeepValues = false with get, set
    member val Values = ResizeArray<Map<string, Tensor[]>>()

/// Wraps a formulation and logs what the trainer and the solver ask of it, changing nothing.
type Recording(inner: IFormulation, log: Log) =
    member _.Log = log
    interface IFormulation with
        member _.Name = inner.Name
        member _.Description = inner.Description
        member _.PlayerNames = inner.PlayerNames
        member _.HasMaximisingPlayers = inner.HasMaximisingPlayers
        member _.DefaultSchedule = inner.DefaultSchedule
        member this.Lift(context, weights) = new RecordingProblem(this, inner.Lift(context, weights), log) :> ILiftedProblem

and RecordingProblem(owner: IFormulation, inner: ILiftedProblem, log: Log) =
    interface ILiftedProblem with
        member _.Formulation = owner
        member _.Weights = inner.Weights
        member _.Store = inner.Store
        member _.StateBytes = inner.StateBytes
        member _.Batch(batch) =
            log.Batches.Add((log.Epoch, batch.Indices.data<int64>().ToArray()))
            log.Evaluations.Add 0
            log.Committed.Add false
            new RecordingGame(inner.Batch(batch), log, log.Batches.Count - 1) :> IBatchGame
        member _.EndEpoch(epoch) =
            inner.EndEpoch(epoch)
            log.Epoch <- epoch + 1
        member _.Finish() = inner.Finish()
        member _.MeasureDefects(rows) = inner.MeasureDefects(rows)
        member _.Diagnostics = inner.Diagnostics
        member _.Dispose() = inner.Dispose()

and RecordingGame(inner: IBatchGame, log: Log, index: int) =
    interface IBatchGame with
        member _.Players = inner.Players
        member _.Operator(players) =
            log.Requests.Add((log.Epoch, [| for p in players -> p.Name |]))
            log.Evaluations.[index] <- log.Evaluations.[index] + 1
            if log.KeepValues then
                // Outlives the solver's dispose scope: the test reads it after the step.
                log.Values.Add(Map.ofSeq [ for p in inner.Players -> p.Name, [| for v in p.Variables -> v.detach().clone().DetachFromDisposeScope() |] ])
            inner.Operator(players)
        member _.Objective() = inner.Objective()
        member _.Defects = inner.Defects
        member _.MultiplierNorms = inner.MultiplierNorms
        member _.Loss = inner.Loss
        member _.LiftedObjective = inner.LiftedObjective
        member _.Commit() =
            log.Committed.[index] <- true
            inner.Commit()
        member _.Dispose() = inner.Dispose()
    interface IHoldFixed with
        member _.HoldFixed(players) =
            match inner with
            | :? IHoldFixed as h -> h.HoldFixed(players)
            | _ -> { new IDisposable with member _.Dispose() = () }

/// The cosine between two lists of tensors, flattened; 1 when both vanish (e.g. a block of dead
/// ReLU units).
let cosine (a: Tensor seq) (b: Tensor seq) =
    let flat (ts: Tensor seq) = torch.cat(ts |> Seq.map (fun t -> t.flatten()) |> Array.ofSeq, 0L)
    let u, v = flat a, flat b
    let nu, nv = u.norm().ToDouble(), v.norm().ToDouble()
    if nu < 1e-12 && nv < 1e-12 then 1.0 else u.dot(v).ToDouble() / (nu * nv + 1e-300)

/// A random small ReLU or tanh MLP with cross-entropy, for property tests: its shape, the seed
/// of its weights and batch, and the batch size.
type ReluTanhMlp =
    { Inputs: int64; Hidden: int64 list; Classes: int64; Relu: bool; Seed: int; Batch: int64 }
    member m.Program = mlp m.Inputs m.Hidden m.Classes (if m.Relu then Activations.ReLU else Activations.Tanh) Losses.CrossEntropy

let genReluTanhMlp =
    gen {
        let! inputs = Gen.choose (2, 6)
        let! depth = Gen.choose (1, 3)
        let! hidden = Gen.listOfLength depth (Gen.choose (2, 6))
        let! classes = Gen.choose (2, 4)
        let! relu = Gen.elements [ true; false ]
        let! seed = Gen.choose (0, 100000)
        let! batch = Gen.choose (1, 5)
        // `int64` here is TorchSharp's scalar type (open type torch): convert with Operators'.
        let i64 (v: int) = Operators.int64 v
        return { Inputs = i64 inputs; Hidden = hidden |> List.map i64; Classes = i64 classes
                 Relu = relu; Seed = seed; Batch = i64 batch }
    }
