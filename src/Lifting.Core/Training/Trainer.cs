using System.Diagnostics;
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
        Weights? initialWeights = null)
    {
        options.Validate();
        if (options.Patience > 0 && !data.HasValidation)
            throw new ArgumentException($"Early stopping (patience {options.Patience}) needs a validation split; this data has none.");
        observer ??= Observers.None;
        random.manual_seed(options.Seed);
        var train = data.Train;
        var weights = initialWeights ?? program.Initialise(options.Seed, options.Device, options.DType);
        using var ownWeights = initialWeights is null ? weights : null; // the caller's weights stay the caller's
        var context = new LiftContext(program, train, options.Device, options.DType, options.Seed, stepRules, solver.MemorySlots);
        using var problem = formulation.Lift(context, weights);

        int batches = (train.Count + options.BatchSize - 1) / options.BatchSize;
        observer.OnStart(options.Epochs, batches);
        var history = new List<EpochMetrics>();
        var selection = data.HasValidation ? Selection.ValidationAccuracy : Selection.LastEpoch;
        double bestValidation = double.NegativeInfinity;
        int selectedEpoch = 0;
        Weights? selectedWeights = null;
        bool stoppedEarly = false;
        var timer = new Stopwatch();

        try
        {
            for (int epoch = 1; epoch <= options.Epochs; epoch++)
            {
                foreach (var player in formulation.PlayerNames)
                    if (stepRules(player) is IScheduledStepRule scheduled) scheduled.Advance(epoch, options.Epochs);
                // Players whose schedule holds them this epoch (e.g. the weights while the rows
                // settle) are held fixed: the solver iterates the others only.
                var moving = formulation.PlayerNames.Where(p => stepRules(p) is not IScheduledStepRule { Holding: true }).ToArray();
                if (moving.Length == 0)
                    throw new ArgumentException($"Every player is held at epoch {epoch}; nothing would be trained.");
                bool holding = moving.Length < formulation.PlayerNames.Count;
                double objectiveSum = 0, lossSum = 0;
                double? cosine = null;
                var multiplierNorms = Array.Empty<double>();
                double batchDefect = 0;
                timer.Restart();
                int b = 0;
                foreach (var batch in MiniBatches.Epoch(train, options.BatchSize, options.Seed, epoch))
                {
                    using var scope = NewDisposeScope();
                    using var owned = batch;
                    var typed = Cast(batch, options.DType);
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
                    objectiveSum += game.LiftedObjective;
                    lossSum += game.Loss;
                    if (b == batches - 1)
                    {
                        multiplierNorms = game.MultiplierNorms.ToArray();
                        timer.Stop();
                        var rows = problem.MeasureDefects(typed.Indices);
                        batchDefect = rows.Count == 0 ? 0 : rows.Average();
                        timer.Start();
                    }
                    b++;
                    observer.OnBatch(epoch, b, batches);
                }
                timer.Stop();
                problem.EndEpoch(epoch);

                var defects = problem.MeasureDefects();
                var trainLoss = Evaluate(program, problem.Weights.Tensors, train, options.DType).Loss;
                var validation = data.HasValidation ? Evaluate(program, problem.Weights.Tensors, data.Validation, options.DType) : null;
                var test = Evaluate(program, problem.Weights.Tensors, data.Test, options.DType);
                NativeMemory.ReleaseFreePages();
                var metrics = new EpochMetrics(epoch, trainLoss, objectiveSum / b, lossSum / b, validation, test,
                    timer.Elapsed.TotalSeconds, defects, batchDefect, multiplierNorms, cosine, problem.Diagnostics)
                {
                    Held = formulation.PlayerNames.Except(moving).ToArray(),
                };
                history.Add(metrics);
                observer.OnEpoch(metrics);
                if (!double.IsFinite(trainLoss))
                    throw new TrainingDivergedException($"Training diverged at epoch {epoch}: the training loss is {trainLoss}.");
                if (validation is not null && validation.Accuracy > bestValidation)
                {
                    bestValidation = validation.Accuracy;
                    selectedEpoch = epoch;
                    selectedWeights?.Dispose();
                    selectedWeights = problem.Weights.Clone();
                }
                else if (options.Patience > 0 && epoch - selectedEpoch >= options.Patience)
                {
                    stoppedEarly = true;
                    break;
                }
            }

            // The formulation's end-of-training pass (e.g. MAC's feasibility pass) comes before the
            // final measurement; the defect before it is reported too.
            var before = problem.MeasureDefects();
            problem.Finish();
            var after = problem.MeasureDefects();
            if (selectedWeights is null)
            {
                selection = Selection.LastEpoch;
                selectedEpoch = history.Count;
                selectedWeights = problem.Weights.Clone();
            }
            return new TrainingResult(history, selection, selectedEpoch,
                before.Count == 0 ? 0 : before.Average(), after.Count == 0 ? 0 : after.Average(), history[^1].BatchDefect,
                history.Average(m => m.Seconds),
                history.Where(m => m.Held.Count == 0).Select(m => m.Seconds).DefaultIfEmpty(double.NaN).Average(),
                problem.Store.Bytes / Math.Max(1, train.Count), stoppedEarly)
            {
                Weights = problem.Weights.Clone(),
                SelectedWeights = selectedWeights!,
                Engine = EngineInfo.Current(options.Device),
                StateBytes = problem.StateBytes,
            };
        }
        catch
        {
            selectedWeights?.Dispose();
            throw;
        }
    }

    /// Trains with a resolved method (`Methods.Resolve`): its formulation, solver and step rules.
    public static TrainingResult Train(NestedProgram program, DataSplit data, ResolvedMethod method,
        TrainingOptions options, ITrainingObserver? observer = null, Weights? initialWeights = null) =>
        Train(program, data, method.Formulation, method.Solver, method.StepRules, options, observer, initialWeights);

    private static MiniBatch Cast(MiniBatch batch, ScalarType dtype) =>
        batch.Inputs.dtype == dtype ? batch
        : new MiniBatch(batch.Indices, batch.Inputs.to_type(dtype), batch.Labels);

    /// Accuracy and mean loss of the plain forward pass over a dataset (NaN for an empty one).
    public static Evaluation Evaluate(NestedProgram program, IReadOnlyList<Tensor> weights, Dataset data, ScalarType dtype = ScalarType.Float32, int batchSize = 1000)
    {
        using var _ = no_grad();
        double loss = 0;
        long correct = 0;
        foreach (var batch in MiniBatches.Sequential(data, batchSize))
        {
            using var scope = NewDisposeScope();
            using var owned = batch;
            var output = program.Forward(batch.Inputs.to_type(dtype), weights);
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
            var loss = program.Loss.PerExample(program.Forward(batch.Inputs, weights.Tensors), batch.Labels).mean();
            reference = autograd.grad(new[] { loss }, weights.Tensors.ToArray()).ToArray();
        }
        var a = cat(method.Select(t => t.flatten()).ToArray());
        var c = cat(reference.Select(t => t.flatten()).ToArray());
        return (a.dot(c) / (a.norm() * c.norm() + 1e-30)).ToDouble();
    }
}

/// Training produced a non-finite loss.
public sealed class TrainingDivergedException : Exception
{
    public TrainingDivergedException(string message) : base(message) { }
}
