namespace Lifting.FSharp

open System
open Lifting
open Lifting.Data
open Lifting.Programs
open Lifting.Training
open TorchSharp

/// How to train; an F# record (copy and update `Options.defaults`) with one field per setting of
/// the C# `TrainingOptions` (a test holds the two to the same names and defaults).
type Options =
    { Epochs: int
      BatchSize: int
      Seed: int
      Device: torch.Device
      /// The floating-point type of weights, auxiliary variables and data (float32 or float64).
      DType: torch.ScalarType
      IterationsPerBatch: int
      /// Stop after this many epochs without a better validation accuracy (0 = never).
      Patience: int
      CosineToBackprop: bool
      /// Stop as diverged when the training loss after an epoch exceeds this many times its start (infinity = only non-finite values stop).
      MaxLossRatio: float
      /// How the reported epoch is chosen (validation accuracy, or the last epoch).
      Selection: Selection }

module Options =
    let private core = TrainingOptions()
    let defaults =
        { Epochs = core.Epochs; BatchSize = core.BatchSize; Seed = core.Seed; Device = core.Device; DType = core.DType
          IterationsPerBatch = core.IterationsPerBatch; Patience = core.Patience; CosineToBackprop = core.CosineToBackprop
          MaxLossRatio = core.MaxLossRatio; Selection = core.Selection }
    /// The options the C# API takes.
    let toCore (o: Options) =
        TrainingOptions(Epochs = o.Epochs, BatchSize = o.BatchSize, Seed = o.Seed, Device = o.Device, DType = o.DType,
                        IterationsPerBatch = o.IterationsPerBatch, Patience = o.Patience, CosineToBackprop = o.CosineToBackprop,
                        MaxLossRatio = o.MaxLossRatio, Selection = o.Selection)

/// One epoch's metrics with options where the C# record has nulls.
type Epoch =
    { Number: int
      TrainLoss: float
      /// The lifted objective the solver works on (e.g. ℓ + Σ⟨λ, g⟩).
      Objective: float
      LossTerm: float
      Validation: Evaluation option
      ValidationAccuracy: float option
      Test: Evaluation
      TestAccuracy: float
      Seconds: float
      /// Per block, the mean |h_l − f_l(h_{l−1})| over the training set (empty when nothing is lifted).
      Defects: float list
      MeanDefect: float
      CosineToBackprop: float option
      /// The players held fixed this epoch (empty in a learning epoch).
      Held: string list }

module Epoch =
    let ofMetrics (m: EpochMetrics) =
        { Number = m.Epoch; TrainLoss = m.TrainLoss; Objective = m.Objective; LossTerm = m.LossTerm
          Validation = Option.ofObj m.Validation; ValidationAccuracy = Option.ofNullable m.ValidationAccuracy
          Test = m.Test; TestAccuracy = m.TestAccuracy; Seconds = m.Seconds; Defects = List.ofSeq m.Defects
          MeanDefect = m.MeanDefect; CosineToBackprop = Option.ofNullable m.CosineToBackprop; Held = List.ofSeq m.Held }

/// A finished run: its epochs, the epoch selected on validation and the trained weights (dispose
/// the run to free them).
type Run =
    { Method: string
      Epochs: Epoch list
      /// The epoch with the best validation accuracy (the last one without a validation split).
      Selected: Epoch
      Final: Epoch
      FinalDefect: float
      SecondsPerEpoch: float
      Result: TrainingResult }
    interface IDisposable with
        member r.Dispose() = r.Result.Dispose()

module Run =
    let ofResult (methodName: string) (r: TrainingResult) =
        { Method = methodName; Epochs = [ for m in r.Epochs -> Epoch.ofMetrics m ]; Selected = Epoch.ofMetrics r.Selected
          Final = Epoch.ofMetrics r.Final; FinalDefect = r.FinalDefect; SecondsPerEpoch = r.SecondsPerEpoch; Result = r }

/// Datasets by name (`digits`, `mnist-10k`, `fashion-mnist`, a folder of IDX files).
[<RequireQualifiedAccess>]
module Data =
    let load (name: string) = DatasetCatalog.Load name

/// Training as a pipeline: `program |> Train.run options method data`.
[<RequireQualifiedAccess>]
module Train =
    /// Trains `program` on `data` with a resolved method (`Method.resolve`), calling `onEpoch` after every epoch.
    let runWith (onEpoch: Epoch -> unit) (options: Options) (method: ResolvedMethod) (data: DataSplit) (program: NestedProgram) =
        let observer = Observers.OnEpoch(fun m -> onEpoch (Epoch.ofMetrics m))
        Trainer.Train(program, data, method, Options.toCore options, observer) |> Run.ofResult method.Name

    /// Trains `program` on `data` with a resolved method (`Method.resolve`).
    let run (options: Options) (method: ResolvedMethod) (data: DataSplit) (program: NestedProgram) =
        runWith ignore options method data program

    /// Trains with the method named by `spec` (resolved afresh: step rules carry per-run state).
    let method (spec: MethodSpec) (options: Options) (data: DataSplit) (program: NestedProgram) =
        run options (Method.resolve spec) data program
