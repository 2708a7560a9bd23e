using System.Diagnostics;
using System.Globalization;
using Lifting.Data;
using Lifting.Formulations;
using Lifting.Programs;
using Lifting.Solvers;
using static TorchSharp.torch;

namespace Lifting.Examples;

/// Where an ExtraProp step's time goes, against a back-propagation step on the same mini-batch:
/// both run batch by batch, interleaved, on MNIST-10k 784-256-10, and each phase is timed
/// (gather the rows, the inner extragradient iteration on the rows with the weights held, the
/// outer extragradient iteration on every player, scatter the rows back), and a whole
/// `extraprop-rows` step (only the rows extrapolate). Medians over the batches of the epochs after
/// the first `warmup`.
///
///   steptime [epochs=6] [warmup=2]
public static class StepTime
{
    public static int Run(Settings settings)
    {
        int epochs = settings.Int("epochs", 6);
        int warmup = settings.Int("warmup", 2);
        using var data = DatasetCatalog.Load("mnist-10k");
        var program = Net.Mlp(data.Train.ExampleShape, new long[] { 784, 256, 10 }, Activations.ReLU, Losses.CrossEntropy);
        var extraprop = Methods.Resolve(new MethodSettings("extraprop").With("settle", 0.0));
        var backprop = Methods.Resolve(new MethodSettings("backprop"));
        var rowsOnly = Methods.Resolve(new MethodSettings("extraprop-rows").With("settle", 0.0));
        using var liftedWeights = program.Initialise(0);
        using var plainWeights = program.Initialise(0);
        using var lifted = extraprop.Formulation.Lift(new LiftContext(program, data.Train, CPU, ScalarType.Float32, 0, extraprop.StepRules, 0), liftedWeights);
        using var plain = backprop.Formulation.Lift(new LiftContext(program, data.Train, CPU, ScalarType.Float32, 0, backprop.StepRules, 0), plainWeights);
        using var rowsWeights = program.Initialise(0);
        using var rowsLifted = rowsOnly.Formulation.Lift(new LiftContext(program, data.Train, CPU, ScalarType.Float32, 0, rowsOnly.StepRules, 0), rowsWeights);
        var extragradient = Solvers.Solvers.Extragradient();
        var rows = new[] { PlayerNames.States, PlayerNames.Multipliers };
        var phases = new[] { "backprop step", "extraprop: gather rows", "extraprop: inner iteration", "extraprop: outer iteration", "extraprop: scatter rows", "extraprop step", "extraprop-rows step" };
        var times = phases.ToDictionary(p => p, _ => new List<double>());
        for (int epoch = 1; epoch <= epochs; epoch++)
            foreach (var batch in MiniBatches.Epoch(data.Train, 128, 0, epoch))
            {
                using var scope = NewDisposeScope();
                using var owned = batch;
                var clock = Stopwatch.StartNew();
                using (var game = plain.Batch(batch))
                {
                    backprop.Solver.Step(game);
                    game.Commit();
                    _ = game.Loss;
                }
                var t0 = clock.Elapsed.TotalMilliseconds;
                clock.Restart();
                using var lgame = lifted.Batch(batch);
                var t1 = clock.Elapsed.TotalMilliseconds;
                using (var view = new Restricted(lgame, rows)) extragradient.Step(view);
                var t2 = clock.Elapsed.TotalMilliseconds;
                extragradient.Step(lgame);
                var t3 = clock.Elapsed.TotalMilliseconds;
                lgame.Commit();
                _ = lgame.Loss;
                var t4 = clock.Elapsed.TotalMilliseconds;
                clock.Restart();
                using (var rgame = rowsLifted.Batch(batch))
                {
                    rowsOnly.Solver.Step(rgame);
                    rgame.Commit();
                    _ = rgame.Loss;
                }
                var t5 = clock.Elapsed.TotalMilliseconds;
                if (epoch <= warmup) continue;
                times[phases[0]].Add(t0);
                times[phases[1]].Add(t1);
                times[phases[2]].Add(t2 - t1);
                times[phases[3]].Add(t3 - t2);
                times[phases[4]].Add(t4 - t3);
                times[phases[5]].Add(t4);
                times[phases[6]].Add(t5);
            }
        double Median(List<double> v) { var s = v.OrderBy(x => x).ToArray(); return s[s.Length / 2]; }
        var reference = Median(times[phases[0]]);
        Console.WriteLine($"per mini-batch of 128, medians over {times[phases[0]].Count} batches ({Environment.ProcessorCount} cores, CPU):");
        foreach (var phase in phases)
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"  {phase,-28} {Median(times[phase]),7:F3} ms  ×{Median(times[phase]) / reference:F2} backprop step"));
        return 0;
    }
}
