/// Resume equivalence for every family (issue 25): a run interrupted in its second epoch (the
/// cancellation the host's SIGTERM and Ctrl-C handlers signal), saved to a checkpoint file and
/// continued from it ends bit for bit as the uninterrupted run — every schedule (μ, the cosine
/// schedule, settling), counter (AM-mem's memory updates, offline AM's examples, DistProp's variate
/// step) and random stream (dropout) included.
module Lifting.Tests.ResumeTests

open System
open System.IO
open System.Threading
open Expecto
open TorchSharp
type Tensor = torch.Tensor
open Lifting
open Lifting.Programs
open Lifting.Storage
open Lifting.Training
open Lifting.Tests.Support

let digits = lazy (Lifting.Data.DatasetCatalog.Load "digits")

/// Cancels once the run reaches mini-batch `batch` of epoch `epoch` (the trainer stops at the next
/// boundary: inside the epoch).
type CancelAt(epoch: int, batch: int, cts: CancellationTokenSource) =
    interface ITrainingObserver with
        member _.OnBatch(e, b, _) = if e = epoch && b = batch then cts.Cancel()

let train (method: MethodSettings) (program: NestedProgram) epochs (control: TrainingControl) (observer: ITrainingObserver option) =
    let m = Methods.Resolve method
    let options = TrainingOptions(Epochs = epochs, BatchSize = 128, Seed = 3)
    Trainer.Train(program, digits.Force(), m.Formulation, m.Solver, m.StepRules, options, Option.toObj observer, null, control)

let same (a: Weights) (b: Weights) =
    Seq.forall2 (fun (u: Tensor) (v: Tensor) -> u.eq(v).all().ToBoolean()) (Seq.append a.Tensors a.Buffers) (Seq.append b.Tensors b.Buffers)

/// Uninterrupted; interrupted at (epoch 2, batch 3) with the checkpoint written to a file; resumed
/// from the file in a fresh trainer: the final and the selected weights must be identical.
let resumeEquivalence (method: MethodSettings) (program: NestedProgram) epochs =
    use whole = train method program epochs (TrainingControl()) None
    let path = Path.Combine(scratchDir "resume", "checkpoint.safetensors")
    use cts = new CancellationTokenSource()
    let control = TrainingControl(Cancellation = cts.Token, OnCheckpoint = Action<TrainingSnapshot>(fun s -> Checkpoint.Save(path, s)))
    let interrupted =
        try
            train method program epochs control (Some (CancelAt(2, 3, cts) :> ITrainingObserver)) |> ignore
            false
        with :? TrainingInterruptedException -> true
    Expect.isTrue interrupted "the run stops inside epoch 2"
    use checkpoint = Checkpoint.Load path
    Expect.equal checkpoint.State.CompletedEpochs 1 "one epoch completed"
    Expect.isGreaterThan checkpoint.State.BatchesDone 0 "inside the second epoch"
    use resumed = train method program epochs (TrainingControl(ResumeFrom = checkpoint)) None
    Expect.isTrue (same resumed.Weights whole.Weights) $"{method.Label}: the resumed run's final weights are the uninterrupted run's, bit for bit"
    Expect.isTrue (same resumed.SelectedWeights whole.SelectedWeights) $"{method.Label}: and so are the selected weights"
    Expect.equal resumed.SelectedEpoch whole.SelectedEpoch "the same epoch is selected"

let mlp = lazy (Net.Mlp([| 1L; 8L; 8L |], [| 64L; 16L; 16L; 10L |], Activations.ReLU, Losses.CrossEntropy))

/// One method of every family (and the variants whose state is easy to lose), on a 64-16-16-10 MLP.
let methods = [
    "backprop"; "extraprop"; "gda"; "auglag"; "penalty"; "regularized"; "distprop"; "distprop-seed001"
    "am-adam"; "am-mem"; "am-adam-off"; "am-mem-off"; "admm"; "pcn"; "lpom"; "chl"; "eqprop"; "fenchel-bp"; "fa"; "dfa"; "sign-symmetric"; "dsn"; "dtp"; "tp"
]

[<Tests>]
let tests =
    testList "ResumeTests" [
        for name in methods do
            test $"resume equivalence: {name} interrupted inside epoch 2 and continued from its checkpoint file ends bit for bit as the uninterrupted run" {
                resumeEquivalence (MethodSettings name) (mlp.Force()) 3
            }
        test "resume equivalence of equation-built formulations: penalty (μ, a schedule of the equation) and extraprop on a residual MLP with batch normalisation and dropout" {
            resumeEquivalence (MethodSettings("penalty").With("equation", true)) (mlp.Force()) 3
            let residual = NetSpec.Build("flatten, dense:16, batchnorm, relu, dropout:0.2, res:16:1, dense:10", [| 1L; 8L; 8L |], 10, Activations.ReLU, Losses.CrossEntropy)
            resumeEquivalence (MethodSettings("extraprop").With("equation", true)) residual 3
        }
        test "resume equivalence of this session's settings: the penalty with restart-states, and backprop with nesterov, weight decay, a clip, warm-up and step decay" {
            resumeEquivalence (MethodSettings("penalty").With("restart-states", true)) (mlp.Force()) 3
            let transforms = MethodSettings("backprop").With("optimizer", "nesterov").With("lr", 0.05).With("weight-decay", 1e-3).With("clip-norm", 1.0).With("warmup", 1).With("decay-every", 2)
            resumeEquivalence transforms (mlp.Force()) 3
        }
        test "resume equivalence on graphs: extraprop on a residual MLP with batch normalisation and dropout (running statistics, the dropout stream) and am-adam on an Elman RNN (μ and the tied cell)" {
            let residual = NetSpec.Build("flatten, dense:16, batchnorm, relu, dropout:0.2, res:16:1, dense:10", [| 1L; 8L; 8L |], 10, Activations.ReLU, Losses.CrossEntropy)
            resumeEquivalence (MethodSettings "extraprop") residual 3
            resumeEquivalence (MethodSettings "backprop") residual 3
            let rnn = NetSpec.Build("elman:8, dense:10", [| 1L; 8L; 8L |], 10, Activations.ReLU, Losses.CrossEntropy)
            resumeEquivalence (MethodSettings "am-adam") rnn 3
        }
    ]
