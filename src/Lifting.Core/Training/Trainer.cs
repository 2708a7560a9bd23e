using System.Diagnostics;
using System.Globalization;
using Lifting.Storage;
using Lifting.Data;
using Lifting.Formulations;
using Lifting.Programs;
using Lifting.Solvers;
using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Training;

/// Trains a program with any (formulation, solver) pair: epochs of shuffled mini-batches; for
/// each, the formulation gathers the batch's variables into a game, the solver updates them and
/// the formulation scatters them back. Evaluation is a plain forward pass on the training,
/// validation and test splits. The validation accuracy selects the reported epoch and drives early
/// stopping; the test split is only reported. Every mini-batch step runs inside a dispose scope;
/// for a seed and a thread count on CPU the run is deterministic.
public static class Trainer
{
    public static TrainingResult Train(
        NestedProgram program,
        DataSplit data,
        IFormulation formulation,
        ISolver solver,
        Func<string, IStepRule> stepRules,
        TrainingOptions options,
        ITrainingObserver? observer = null,
        Weights? initialWeights = null) =>
        Train(program, data, formulation, solver, stepRules, options, observer, initialWeights, null);

    /// Trains as above under `control`: interrupted through its cancellation token (a checkpoint
    /// of the state at the next mini-batch boundary is handed to `OnCheckpoint`, then
    /// `TrainingInterruptedException`), checkpointed after every epoch, or continued from a
    /// checkpoint (`ResumeFrom`) of the same program, data, method and options, ending exactly as
    /// the uninterrupted run. A non-finite value or a blow-up past `TrainingOptions.MaxLossRatio`
    /// stops the run with `TrainingDivergedException` naming the variable, before the epoch's
    /// checkpoint is taken, so the last one saved is the last good state.
    public static TrainingResult Train(
        NestedProgram program,
        DataSplit data,
        IFormulation formulation,
        ISolver solver,
        Func<string, IStepRule> stepRules,
        TrainingOptions options,
        ITrainingObserver? observer,
        Weights? initialWeights,
        TrainingControl? control)
    {
        options.Validate();
        VectorMath.Prepare();
        NativeMemory.Configure(); // the C heap's thresholds, once per process
        if (options.Patience > 0 && !data.HasValidation)
            throw new ArgumentException($"Early stopping (patience {options.Patience}) needs a validation split; this data has none.");
        if (options.CosineToBackprop && formulation is IClosedFormFormulation)
            throw new ArgumentException($"--cosine compares the weights' direction with back-propagation's gradient; {formulation.Name} solves its sub-problems in closed form and has no such direction.");
        observer ??= Observers.None;
        control ??= new TrainingControl();
        var resume = control.ResumeFrom;
        // A checkpoint continues its plan, or extends it to more epochs (schedules that depend on
        // the planned count then follow the new count from the next epoch on).
        if (resume is not null && options.Epochs < resume.State.Epochs)
            throw new ArgumentException($"The checkpoint plans {resume.State.Epochs} epochs, these options {options.Epochs}: a run can be extended, not shortened.");
        random.manual_seed(options.Seed);
        var weights = initialWeights ?? program.Initialise(options.Seed, options.Device, options.DType);
        using var ownWeights = initialWeights is null ? weights : null; // the caller's weights stay the caller's
        var context = new LiftContext(program, data.Train, options.Device, options.DType, options.Seed, stepRules, solver.MemorySlots);
        using var problem = formulation.Lift(context, weights);
        var checkpointable = problem as ICheckpointable;
        if ((resume is not null || control.OnCheckpoint is not null) && checkpointable is null)
            throw new ArgumentException($"The lifted problem of {formulation.Name} cannot be checkpointed (derive it from LiftedProblem or implement ICheckpointable).");

        var loop = new EpochLoop(program, data, formulation, solver, stepRules, options, observer, control, problem);
        var state = new TrainerState { Epochs = options.Epochs };
        var selection = new ValidationSelection(data.HasValidation && options.Selection == Selection.ValidationAccuracy, options.Patience);
        if (resume is not null)
        {
            resume.RestoreInto(checkpointable!);
            state = resume.State with { Epochs = options.Epochs };
            selection.Resume(state.BestValidation, state.SelectedEpoch, resume.SelectedWeights(program, options.Device));
        }
        else state = state with { InitialLoss = Evaluate(program, problem.Weights, data.Train, options.DType).Loss };
        observer.OnStart(options.Epochs, loop.Batches);
        var history = new List<EpochMetrics>(state.History);
        var guard = new DivergenceGuard(state.InitialLoss, options.MaxLossRatio, checkpointable, program);

        TrainingSnapshot Snapshot(TrainerState s) => new(s with { History = history.ToArray(), BestValidation = selection.BestValidation, SelectedEpoch = selection.SelectedEpoch },
            checkpointable!, selection.Weights, program);

        try
        {
            // A run stopped early by patience has nothing left to do.
            bool stoppedEarly = selection.StoppedAt(state);
            for (int epoch = state.CompletedEpochs + 1; epoch <= options.Epochs && !stoppedEarly; epoch++)
            {
                var metrics = loop.Epoch(epoch, state, guard, Snapshot);
                guard.Check(metrics);
                history.Add(metrics);
                stoppedEarly = selection.Observe(metrics, problem.Weights);
                state = state with { CompletedEpochs = epoch, BatchesDone = 0, ObjectiveSum = 0, LossSum = 0, Seconds = 0, Cosine = null };
                control.OnCheckpoint?.Invoke(Snapshot(state));
                observer.OnEpoch(metrics);
                if (stoppedEarly) break;
                if (control.Cancellation.IsCancellationRequested && epoch < options.Epochs)
                    throw new TrainingInterruptedException(epoch, 0);
            }

            // The formulation's end-of-training pass (e.g. MAC's feasibility pass) comes before the
            // final measurement; the defect before it is reported too.
            var before = problem.MeasureDefects();
            problem.Finish();
            var after = problem.MeasureDefects();
            var (selected, selectedEpoch, selectedWeights) = selection.Result(history.Count, problem.Weights);
            return new TrainingResult(history, selected, selectedEpoch,
                before.Count == 0 ? 0 : before.Average(), after.Count == 0 ? 0 : after.Average(), history[^1].BatchDefect,
                history.Average(m => m.Seconds),
                history.Where(m => m.Held.Count == 0).Select(m => m.Seconds).DefaultIfEmpty(double.NaN).Average(),
                problem.Store.Bytes / Math.Max(1, data.Train.Count), stoppedEarly)
            {
                Weights = problem.Weights.Clone(),
                SelectedWeights = selectedWeights,
                Engine = EngineInfo.Current(options.Device),
                StateBytes = problem.StateBytes,
                PerExampleVariables = problem.Store.Names
                    .GroupBy(n => n.Split('#')[0])
                    .ToDictionary(g => g.Key, g => g.Sum(n => problem.Store[n].NumberOfElements * problem.Store[n].ElementSize) / Math.Max(1, data.Train.Count)),
            };
        }
        catch
        {
            selection.Dispose();
            throw;
        }
    }

    /// One epoch of a run: the schedules advanced, the mini-batches (each one solver step, or
    /// `IterationsPerBatch`, on the batch's game; an interruption between two checkpoints the
    /// state and stops), then the measurements of the epoch's end.
    private sealed class EpochLoop(NestedProgram program, DataSplit data, IFormulation formulation, ISolver solver, Func<string, IStepRule> stepRules,
        TrainingOptions options, ITrainingObserver observer, TrainingControl control, ILiftedProblem problem)
    {
        private readonly Stopwatch timer = new();
        public int Batches { get; } = (data.Train.Count + options.BatchSize - 1) / options.BatchSize;

        /// Advances every scheduled step rule to `epoch` and returns the players that move in it:
        /// those whose schedule holds them (e.g. the weights while the rows settle) are held fixed,
        /// and the solver iterates the others only.
        private string[] AdvanceSchedules(int epoch)
        {
            foreach (var player in formulation.PlayerNames)
                if (stepRules(player) is IScheduledStepRule scheduled) scheduled.Advance(epoch, options.Epochs);
            var moving = formulation.PlayerNames.Where(p => stepRules(p) is not IScheduledStepRule { Holding: true }).ToArray();
            if (moving.Length == 0)
                throw new ArgumentException($"Every player is held at epoch {epoch}; nothing would be trained.");
            return moving;
        }

        public EpochMetrics Epoch(int epoch, TrainerState state, DivergenceGuard guard, Func<TrainerState, TrainingSnapshot> snapshot)
        {
            var moving = AdvanceSchedules(epoch);
            bool holding = moving.Length < formulation.PlayerNames.Count;
            bool continuing = epoch == state.CompletedEpochs + 1 && state.BatchesDone > 0;
            double objectiveSum = continuing ? state.ObjectiveSum : 0, lossSum = continuing ? state.LossSum : 0;
            double? cosine = continuing ? state.Cosine : null;
            double earlierSeconds = continuing ? state.Seconds : 0;
            var multiplierNorms = Array.Empty<double>();
            double batchDefect = 0;
            timer.Restart();
            int b = continuing ? state.BatchesDone : 0;
            foreach (var batch in MiniBatches.Epoch(data.Train, options.BatchSize, options.Seed, epoch, firstBatch: b))
            {
                using var scope = NewDisposeScope();
                using var owned = batch;
                var typed = Cast(batch, options.DType, (long)(epoch - 1) * Batches + b);
                using var game = problem.Batch(typed);
                if (options.CosineToBackprop && b == 0)
                {
                    timer.Stop();
                    cosine = CosineToBackprop(program, problem.Weights, game, typed);
                    timer.Start();
                }
                using (var view = holding ? new Restricted(game, moving) : null)
                    for (int k = 0; k < options.IterationsPerBatch; k++) solver.Step(view ?? (IGame)game);
                game.Commit();
                // Reading the recorded scalars synchronises with the device; cheap on CPU.
                var objective = game.LiftedObjective;
                guard.CheckBatch(epoch, b + 1, objective);
                objectiveSum += objective;
                var batchLoss = game.Loss;
                lossSum += batchLoss;
                if (b == Batches - 1)
                {
                    multiplierNorms = game.MultiplierNorms.ToArray();
                    timer.Stop();
                    var rows = problem.MeasureDefects(typed.Indices);
                    batchDefect = rows.Count == 0 ? 0 : rows.Average();
                    timer.Start();
                }
                b++;
                observer.OnBatch(epoch, b, Batches, batchLoss, objective);
                if (control.Cancellation.IsCancellationRequested && b < Batches)
                {
                    timer.Stop();
                    control.OnCheckpoint?.Invoke(snapshot(state with
                    {
                        CompletedEpochs = epoch - 1, BatchesDone = b, ObjectiveSum = objectiveSum, LossSum = lossSum,
                        Seconds = earlierSeconds + timer.Elapsed.TotalSeconds, Cosine = cosine,
                    }));
                    throw new TrainingInterruptedException(epoch - 1, b);
                }
            }
            timer.Stop();
            problem.EndEpoch(epoch);

            var defects = problem.MeasureDefects();
            var trainLoss = Evaluate(program, problem.Weights, data.Train, options.DType).Loss;
            var validation = data.HasValidation ? Evaluate(program, problem.Weights, data.Validation, options.DType) : null;
            var test = Evaluate(program, problem.Weights, data.Test, options.DType);
            NativeMemory.ReleaseFreePages();
            return new EpochMetrics(epoch, trainLoss, objectiveSum / b, lossSum / b, validation, test,
                earlierSeconds + timer.Elapsed.TotalSeconds, defects, batchDefect, multiplierNorms, cosine, problem.Diagnostics)
            {
                Held = formulation.PlayerNames.Except(moving).ToArray(),
            };
        }
    }

    /// Stops a run that produced a non-finite value or whose training loss blew up past
    /// `MaxLossRatio` times its start, naming where it shows (`Diverged`).
    private sealed class DivergenceGuard(double initialLoss, double maxLossRatio, ICheckpointable? problem, NestedProgram program)
    {
        public void CheckBatch(int epoch, int batch, double objective)
        {
            if (!double.IsFinite(objective))
                throw Diverged(epoch, batch, $"the lifted objective is {Show(objective)}", problem, program, nonFinite: true);
        }

        public void Check(EpochMetrics m)
        {
            if (!double.IsFinite(m.TrainLoss))
                throw Diverged(m.Epoch, null, $"the training loss is {Show(m.TrainLoss)}", problem, program, nonFinite: true);
            if (m.Defects.Concat(m.MultiplierNorms).Any(v => !double.IsFinite(v)))
                throw Diverged(m.Epoch, null, "a defect or multiplier norm is not finite", problem, program, nonFinite: true);
            if (m.TrainLoss > maxLossRatio * Math.Max(initialLoss, 1e-12))
                throw Diverged(m.Epoch, null, string.Create(CultureInfo.InvariantCulture,
                    $"the training loss {m.TrainLoss:G4} is more than {maxLossRatio:G4} times its start {initialLoss:G4}"), problem, program, nonFinite: false);
        }
    }

    /// The reported epoch: the first with the best validation accuracy (a copy of its weights
    /// kept), or the last when there is no validation split or `Selection.LastEpoch` is asked for;
    /// and early stopping, `patience` epochs after the selected one without a better one.
    private sealed class ValidationSelection(bool byValidation, int patience) : IDisposable
    {
        public double BestValidation { get; private set; } = double.NegativeInfinity;
        public int SelectedEpoch { get; private set; }
        public Weights? Weights { get; private set; }

        public void Resume(double best, int epoch, Weights? weights) => (BestValidation, SelectedEpoch, Weights) = (best, epoch, weights);

        /// Whether a resumed run had already stopped early at the end of its last epoch.
        public bool StoppedAt(TrainerState state) => patience > 0 && state.CompletedEpochs > 0 && state.BatchesDone == 0
            && state.CompletedEpochs - SelectedEpoch >= patience;

        /// Takes the epoch's validation accuracy; true when the run should stop early.
        public bool Observe(EpochMetrics m, Weights current)
        {
            if (byValidation && m.Validation is not null && m.Validation.Accuracy > BestValidation)
            {
                BestValidation = m.Validation.Accuracy;
                SelectedEpoch = m.Epoch;
                Weights?.Dispose();
                Weights = current.Clone();
                return false;
            }
            return patience > 0 && m.Epoch - SelectedEpoch >= patience;
        }

        /// The selection rule that applied, the selected epoch and its weights (the last epoch's
        /// when none was selected by validation).
        public (Selection, int, Weights) Result(int epochs, Weights last)
        {
            if (Weights is not null) return (byValidation ? Selection.ValidationAccuracy : Selection.LastEpoch, SelectedEpoch, Weights);
            SelectedEpoch = epochs;
            Weights = last.Clone();
            return (Selection.LastEpoch, SelectedEpoch, Weights);
        }

        public void Dispose()
        {
            Weights?.Dispose();
            Weights = null;
        }
    }

    private static string Show(double v) => v.ToString("G4", CultureInfo.InvariantCulture);

    /// The divergence at `epoch` (and mini-batch), naming where it shows: the first variable of
    /// the problem's state holding a non-finite value, or else the one of largest magnitude.
    private static TrainingDivergedException Diverged(int epoch, int? batch, string what, ICheckpointable? problem, NestedProgram program, bool nonFinite)
    {
        string? culprit = null;
        if (problem is not null)
        {
            using var _ = no_grad();
            double largest = -1;
            foreach (var (name, t) in problem.StateTensors)
            {
                if (name.Contains('#') || t.NumberOfElements == 0 || !t.is_floating_point()) continue; // step-rule state follows its variable
                using var scope = NewDisposeScope();
                if (!t.isfinite().all().ToBoolean())
                {
                    culprit = $"{Describe(name, program)} holds non-finite values";
                    break;
                }
                var magnitude = t.abs().max().ToDouble();
                if (!nonFinite && magnitude > largest)
                {
                    largest = magnitude;
                    culprit = string.Create(CultureInfo.InvariantCulture, $"largest magnitude in {Describe(name, program)}: {magnitude:G4}");
                }
            }
        }
        var where = batch is { } b ? $"epoch {epoch}, mini-batch {b}" : $"epoch {epoch}";
        return new TrainingDivergedException($"Training diverged at {where}: {what}{(culprit is null ? "" : $"; {culprit}")}.", epoch, culprit);
    }

    /// "block 2 weight dense(128→10).weight" or "block 1 per-example variable h1".
    private static string Describe(string name, NestedProgram program)
    {
        var slash = name.IndexOf('/');
        var kind = slash < 0 ? "" : name[..slash];
        var rest = slash < 0 ? name : name[(slash + 1)..];
        if (kind == "weights" && rest.StartsWith("block", StringComparison.Ordinal))
        {
            var dot = rest.IndexOf('.');
            return $"block {rest[5..dot]} weight {rest[(dot + 1)..]}";
        }
        var digits = new string(rest.Reverse().TakeWhile(char.IsDigit).Reverse().ToArray());
        var what = kind == "store" ? "per-example variable" : kind == "shared" ? "shared variable" : "variable";
        return digits.Length > 0 && digits.Length < rest.Length ? $"block {digits} {what} {rest}" : $"{what} {rest}";
    }

    /// Trains with a resolved method (`Methods.Resolve`): its formulation, solver and step rules.
    public static TrainingResult Train(NestedProgram program, DataSplit data, ResolvedMethod method,
        TrainingOptions options, ITrainingObserver? observer = null, Weights? initialWeights = null) =>
        Train(program, data, method.Formulation, method.Solver, method.StepRules, options, observer, initialWeights);

    /// The batch in the run's dtype, numbered as step `step` of the run.
    private static MiniBatch Cast(MiniBatch batch, ScalarType dtype, long step) =>
        new(batch.Indices, batch.Inputs.dtype == dtype ? batch.Inputs : batch.Inputs.to_type(dtype), batch.Labels) { Step = step };

    /// Accuracy and mean loss of the plain forward pass over a dataset, in evaluation mode (running
    /// statistics, no dropout).
    public static Evaluation Evaluate(NestedProgram program, Weights weights, Dataset data, ScalarType dtype = ScalarType.Float32, int batchSize = 1000)
    {
        using var pass = program.HasModes ? ForwardPass.Evaluation(weights) : null;
        return Evaluate(program, weights.Tensors, data, dtype, batchSize, pass);
    }

    /// Accuracy and mean loss of the plain forward pass over a dataset (NaN for an empty one).
    public static Evaluation Evaluate(NestedProgram program, IReadOnlyList<Tensor> weights, Dataset data, ScalarType dtype = ScalarType.Float32, int batchSize = 1000, ForwardPass? pass = null)
    {
        VectorMath.Prepare();
        using var _ = no_grad();
        double loss = 0;
        long correct = 0;
        foreach (var batch in MiniBatches.Sequential(data, batchSize))
        {
            using var scope = NewDisposeScope();
            using var owned = batch;
            var output = program.Forward(batch.Inputs.to_type(dtype), weights, pass);
            loss += program.Loss.PerExample(output, batch.Labels).sum().ToDouble();
            correct += output.argmax(1).eq(batch.Labels).sum().ToInt64();
        }
        return new Evaluation((double)correct / data.Count, loss / data.Count);
    }

    /// Cosine between the method's weight direction (its operator on the weights player, a descent
    /// direction) and the back-propagation gradient of the mean loss on the same batch: +1 when the
    /// method would step exactly as back-propagation does.
    public static double CosineToBackprop(NestedProgram program, Weights weights, IGame game, MiniBatch batch)
    {
        var player = game.Players.FirstOrDefault(p => p.Name == PlayerNames.Weights)
            ?? throw new InvalidOperationException("The game has no weights player.");
        var method = game.Operator(new[] { player })[0];
        Tensor[] reference;
        using (enable_grad())
        {
            // A training pass that leaves the running statistics alone: a diagnostic changes nothing.
            using var pass = program.HasModes ? new ForwardPass(ProgramMode.Train, weights.Buffers, 0, batch.Step, updatesStatistics: false) : null;
            var loss = program.Loss.PerExample(program.Forward(batch.Inputs, weights.Tensors, pass), batch.Labels).mean();
            reference = autograd.grad(new[] { loss }, weights.Tensors.ToArray()).ToArray();
        }
        var a = cat(method.Select(t => t.flatten()).ToArray());
        var c = cat(reference.Select(t => t.flatten()).ToArray());
        return (a.dot(c) / (a.norm() * c.norm()).Plus(1e-30)).ToDouble();
    }
}

/// Training produced a non-finite value or a blow-up; the message names where it shows.
public sealed class TrainingDivergedException : Exception
{
    public TrainingDivergedException(string message) : base(message) { }

    public TrainingDivergedException(string message, int epoch, string? variable) : base(message)
    {
        Epoch = epoch;
        Variable = variable;
    }

    /// The epoch in which it was detected (0 when unknown).
    public int Epoch { get; }
    /// Where it shows (block and variable), when found.
    public string? Variable { get; }
}

/// Training stopped at a mini-batch boundary because `TrainingControl.Cancellation` was signalled,
/// after a checkpoint of that state was handed out.
public sealed class TrainingInterruptedException : OperationCanceledException
{
    public TrainingInterruptedException(int completedEpochs, int batchesDone)
        : base($"Training interrupted after {completedEpochs} epochs{(batchesDone > 0 ? $" and {batchesDone} mini-batches" : "")}.")
    {
        CompletedEpochs = completedEpochs;
        BatchesDone = batchesDone;
    }

    public int CompletedEpochs { get; }
    public int BatchesDone { get; }
}

/// How a run is steered from outside: interruption, checkpoints and resumption.
public sealed record TrainingControl
{
    /// Signalled to stop at the next mini-batch boundary (e.g. on Ctrl-C).
    public CancellationToken Cancellation { get; init; }

    /// Receives the state after every epoch (before the observer's `OnEpoch`), and on
    /// interruption; save it with `Checkpoint.Save` during the call.
    public Action<TrainingSnapshot>? OnCheckpoint { get; init; }

    /// A checkpoint of this run to continue from.
    public Checkpoint? ResumeFrom { get; init; }
}
