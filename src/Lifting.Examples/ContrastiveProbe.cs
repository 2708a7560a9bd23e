using System.Diagnostics;
using System.Globalization;
using Lifting.Data;
using Lifting.Formulations;
using Lifting.Programs;
using Lifting.Solvers;
using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Examples;

/// How close a contrastive method's weight step is to back-propagation's while it trains: on every
/// `every`-th mini-batch, after inference, the cosine between the surrogate's weight gradient and
/// the back-propagation gradient of the same batch at the same weights, and the inference
/// iterations the tolerance needed. Trains with the method itself (one run, a line per probe).
///
///   contrastive-probe method=pcn [data=mnist-10k] [net=784-256-256-10] [epochs=2] [every=20] [seed=0] [threads=1] [any method parameter=value]
public static class ContrastiveProbe
{
    private static readonly HashSet<string> RunKeys = new() { "method", "data", "net", "epochs", "every", "seed", "threads", "batch" };

    public static int Run(Settings settings)
    {
        using var data = DatasetCatalog.Load(settings.Text("data", "mnist-10k"));
        var program = Net.Mlp(data.Train.ExampleShape, settings.Longs("net", "784-256-256-10", '-'), Activations.ReLU, Losses.CrossEntropy);
        var method = Methods.Resolve(new MethodSettings(settings.Text("method", "pcn"))
        {
            Values = settings.Where(kv => !RunKeys.Contains(kv.Key)).ToDictionary(kv => kv.Key, kv => kv.Value),
        });
        if (method.Solver is not InnerSolve solver) throw new ArgumentException($"{method.Name} is not a contrastive method.");
        int epochs = settings.Int("epochs", 2), every = settings.Int("every", 20), seed = settings.Int("seed", 0), batchSize = settings.Int("batch", 128);
        random.manual_seed(seed);
        using var weights = program.Initialise(seed);
        using var problem = method.Formulation.Lift(new LiftContext(program, data.Train, CPU, ScalarType.Float32, seed, method.StepRules, solver.MemorySlots), weights);
        var inner = SolverCatalog.Create(method.Arguments.Text("inference-solver"), method.Formulation.DefaultSchedule);
        var outer = SolverCatalog.Create(method.Arguments.Text("solver"), method.Formulation.DefaultSchedule);
        var cosines = new List<double>();
        Console.WriteLine($"{method.Name}: {method.Formulation.Description}; {solver.Name}");
        int step = 0;
        for (int epoch = 1; epoch <= epochs; epoch++)
        {
            foreach (var batch in MiniBatches.Epoch(data.Train, batchSize, seed, epoch))
            {
                using var scope = NewDisposeScope();
                using var owned = batch;
                using var game = problem.Batch(batch);
                if (step++ % every != 0)
                {
                    solver.Step(game);
                    continue;
                }
                int iterations;
                var clock = Stopwatch.StartNew();
                using (var view = new Restricted(game, new[] { PlayerNames.Activations }))
                    iterations = InnerSolve.Solve(inner, view, solver.MaxIterations, solver.Tolerance);
                var weightsPlayer = game.Players.First(p => p.Name == PlayerNames.Weights);
                var direction = game.Operator(new[] { weightsPlayer })[0];
                var ms = clock.Elapsed.TotalMilliseconds;
                Tensor[] reference;
                using (enable_grad())
                {
                    var loss = program.Loss.PerExample(program.Forward(batch.Inputs, weights.Tensors), batch.Labels).mean();
                    reference = autograd.grad(new[] { loss }, weights.Tensors.ToArray()).ToArray();
                }
                var perTensor = direction.Zip(reference).Select(p => Cosine(p.First, p.Second)).ToArray();
                var all = Cosine(cat(direction.Select(t => t.flatten()).ToArray()), cat(reference.Select(t => t.flatten()).ToArray()));
                var ratio = (cat(direction.Select(t => t.flatten()).ToArray()).norm() / cat(reference.Select(t => t.flatten()).ToArray()).norm()).ToDouble();
                cosines.Add(all);
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"  epoch {epoch} batch {step - 1,4}: cosine {all:F4} (per tensor {string.Join(" ", perTensor.Select(c => c.ToString("F3", CultureInfo.InvariantCulture)))}) norm ratio {ratio:F3}, {iterations} inference iterations, {ms:F1} ms, loss {game.Loss:F4}"));
                using (var view = new Restricted(game, new[] { PlayerNames.Weights })) outer.Step(view);
            }
        }
        var sorted = cosines.OrderBy(c => c).ToArray();
        Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"RESULT {method.Name} {string.Join(" ", settings.Select(kv => $"{kv.Key}={kv.Value}"))}: cosine median {sorted[sorted.Length / 2]:F4}, min {sorted[0]:F4} over {sorted.Length} probes"));
        return 0;
    }

    private static double Cosine(Tensor a, Tensor b) => (a.flatten().dot(b.flatten()) / (a.norm() * b.norm() + 1e-30)).ToDouble();
}
