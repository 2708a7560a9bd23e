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
/// the formulation scatters them back. Evaluation is a plain forward pass. Every mini-batch step
/// runs inside a dispose scope; for a seed on CPU the run is deterministic.
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
        observer ??= Observers.None;
        random.manual_seed(options.Seed);
        var train = data.Train;
        var test = data.Test;
        var weights = initialWeights ?? program.Initialise(options.Seed, options.Device, options.DType);
        using var ownWeights = initialWeights is null ? weights : null; // the caller's weights stay the caller's
        var context = new LiftContext(program, train, options.Device, options.DType, options.Seed, stepRules, solver.MemorySlots);
        using var problem = formulation.Lift(context, weights);

        int batches = (train.Count + options.BatchSize - 1) / options.BatchSize;
        observer.OnStart(options.Epochs, batches);
        var history = new List<EpochMetrics>();
        double best = double.NegativeInfinity;
        int bestEpoch = 0;
        bool stoppedEarly = false;
        var timer = new Stopwatch();

        for (int epoch = 1; epoch <= options.Epochs; epoch++)
        {
            foreach (var player in formulation.PlayerNames)
                if (stepRules(player) is IScheduledStepRule scheduled) scheduled.Advance(epoch, options.Epochs);
            // Players whose schedule holds them this epoch (e.g. the weights while the rows settle)
            // are held fixed: the solver iterates the others only.
            var moving = formulation.PlayerNames.Where(p => stepRules(p) is not IScheduledStepRule { Holding: true }).ToArray();
            if (moving.Length == 0)
                throw new ArgumentException($"Every player is held at epoch {epoch}; nothing would be trained.");
            bool holding = moving.Length < formulation.PlayerNames.Count;
            double objectiveSum = 0, lossSum = 0;
            int seen = 0;
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
                lossSum += game.Loss;
                objectiveSum += game.Loss;
                if (b == batches - 1)
                {
                    multiplierNorms = game.MultiplierNorms.ToArray();
                    timer.Stop();
                    var after = problem.MeasureDefects(typed.Indices);
                    batchDefect = after.Count == 0 ? 0 : after.Average();
                    timer.Start();
                }
                seen++;
                b++;
                observer.OnBatch(epoch, b, batches);
            }
            timer.Stop();
            problem.EndEpoch(epoch);

            var defects = problem.MeasureDefects();
            var (trainLoss, _) = Evaluate(program, problem.Weights.Tensors, train, options.DType);
            var (testLoss, testAccuracy) = Evaluate(program, problem.Weights.Tensors, test, options.DType);
            NativeMemory.ReleaseFreePages();
            var metrics = new EpochMetrics(epoch, trainLoss, objectiveSum / Math.Max(1, seen), testAccuracy, testLoss,
                timer.Elapsed.TotalSeconds, defects, batchDefect, multiplierNorms, cosine, problem.Diagnostics)
            {
                Held = formulation.PlayerNames.Except(moving).ToArray(),
            };
            history.Add(metrics);
            observer.OnEpoch(metrics);
            if (!double.IsFinite(trainLoss))
                throw new TrainingDivergedException($"Training diverged at epoch {epoch}: the training loss is {trainLoss}.");
            if (testAccuracy > best) { best = testAccuracy; bestEpoch = epoch; }
            else if (options.Patience > 0 && epoch - bestEpoch >= options.Patience) { stoppedEarly = true; break; }
        }

        var finalDefects = problem.MeasureDefects();
        problem.Finish();
        var last = history[^1];
        return new TrainingResult(history, last.TestAccuracy, best, bestEpoch, last.TrainLoss,
            finalDefects.Count == 0 ? 0 : finalDefects.Average(), last.BatchDefect, history.Average(m => m.Seconds),
            history.Where(m => m.Held.Count == 0).Select(m => m.Seconds).DefaultIfEmpty(double.NaN).Average(),
            problem is LiftedProblem lifted ? lifted.PerExampleBytes / Math.Max(1, train.Count) : 0, stoppedEarly)
        {
            Weights = problem.Weights.Clone(),
        };
    }

    private static MiniBatch Cast(MiniBatch batch, ScalarType dtype) =>
        batch.Inputs.dtype == dtype ? batch
        : new MiniBatch(batch.Indices, batch.Inputs.to_type(dtype), batch.Labels);

    /// Mean loss and accuracy of the plain forward pass over a dataset.
    public static (double Loss, double Accuracy) Evaluate(NestedProgram program, IReadOnlyList<Tensor> weights, Dataset data, ScalarType dtype = ScalarType.Float32, int batchSize = 1000)
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
        return (loss / data.Count, (double)correct / data.Count);
    }

    /// Cosine between the method's weight direction (its operator on the weights player) and the
    /// back-propagation gradient of the mean loss on the same batch.
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
