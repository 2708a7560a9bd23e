using System.Globalization;
using Lifting.Data;
using Lifting.Formulations;
using Lifting.Programs;
using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Examples;

/// What one ePC inference does to a batch while a method trains (issue 27; docs/methods.md, "ePC on
/// deep nets"): on every `every`-th mini-batch, at the current weights, for each error step η of
/// `steps` (one inference step each, at the method's β, no line search) and for η = 1 with the
/// per-example line search, and with the line search capped at `max-shift` (when > 0; it is also
/// the training method's): the energy E = Σ½‖ε‖² + βℓ summed over
/// the batch at ε = 0 and after the step, the output's displacement ‖z_out(ε) − z_out(0)‖ / ‖z_out(0)‖,
/// and the cosine of ePC's weight direction to back-propagation's gradient. Trains with `method`
/// (its own steps; backprop or epc), one line per probe.
///
///   epc-probe [method=epc] [data=mnist-10k] [net=784-256-256-256-256-256-256-10] [beta=0.1] [steps=1,0.5,0.25] [line-search=true] [max-shift=0.01] [epochs=2] [every=10] [seed=0] [batch=128]
public static class EpcProbe
{
    public static int Run(Settings settings)
    {
        using var data = DatasetCatalog.Load(settings.Text("data", "mnist-10k"));
        var program = Net.Mlp(data.Train.ExampleShape, settings.Longs("net", "784-256-256-256-256-256-256-10", '-'), Activations.ReLU, Losses.CrossEntropy);
        var name = settings.Text("method", "epc");
        double beta = settings.Real("beta", 0.1);
        var etas = settings.Reals("steps", "1,0.5,0.25");
        int epochs = settings.Int("epochs", 2), every = settings.Int("every", 10), seed = settings.Int("seed", 0), batchSize = settings.Int("batch", 128);
        double maxShift = settings.Real("max-shift", 0.01);
        var method = Methods.Resolve(name == "epc"
            ? new MethodSettings("epc").With("beta", beta).With("line-search", settings.Text("line-search", "true")).With("max-shift", maxShift)
            : new MethodSettings(name));
        random.manual_seed(seed);
        using var weights = program.Initialise(seed);
        using var problem = method.Formulation.Lift(new LiftContext(program, data.Train, CPU, ScalarType.Float32, seed, method.StepRules, method.Solver.MemorySlots), weights);
        Console.WriteLine($"{method.Name}: {method.Formulation.Description}; probes at beta = {beta}, one step of eta = {string.Join(", ", etas)}");
        Console.WriteLine("step epoch loss | per eta: E(0) -> E(eps) (ratio), |dz_out|/|z_out|, cosine to backprop");
        int step = 0;
        for (int epoch = 1; epoch <= epochs; epoch++)
            foreach (var batch in MiniBatches.Epoch(data.Train, batchSize, seed, epoch))
            {
                using var scope = NewDisposeScope();
                using var owned = batch;
                if (step++ % every == 0)
                {
                    Tensor[] reference;
                    using (enable_grad())
                    {
                        var loss = program.Loss.PerExample(program.Forward(batch.Inputs, weights.Tensors), batch.Labels).mean();
                        reference = autograd.grad(new[] { loss }, weights.Tensors.ToArray()).Select(g => g.detach()).ToArray();
                    }
                    var parts = new List<string>();
                    double lossNow = double.NaN;
                    foreach (var (eta, search, cap) in etas.Select(e => (e, false, 0.0)).Append((1.0, true, 0.0)).Concat(maxShift > 0 ? new[] { (1.0, true, maxShift) } : []))
                    {
                        var epc = new ErrorPredictiveCoding(beta, 1, eta, lineSearch: search, maxShift: cap);
                        var inference = epc.Infer(program, weights.Tensors, batch.Inputs, batch.Labels);
                        lossNow = inference.Losses.mean().ToDouble();
                        using var _ = no_grad();
                        var z0 = program.Forward(batch.Inputs, weights.Tensors);
                        var shift = (inference.States[^1] - z0).norm().ToDouble() / z0.norm().ToDouble();
                        var d = epc.Direction(program, weights.Tensors, batch.Inputs, batch.Labels).Gradients;
                        var cos = Cosine(d, reference);
                        parts.Add(string.Create(CultureInfo.InvariantCulture,
                            $"eta {eta}{(search ? " line search" : "")}{(cap > 0 ? $" max-shift {cap}" : "")}: E {inference.Energies[0]:G4} -> {inference.Energies[1]:G4} ({inference.Energies[1] / inference.Energies[0]:F3}), shift {shift:G3}, cos {cos:F4}"));
                    }
                    Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{step - 1,5} {epoch} {lossNow:F4} | {string.Join(" | ", parts)}"));
                }
                using var game = problem.Batch(batch);
                method.Solver.Step(game);
                if (!double.IsFinite(game.Loss)) { Console.WriteLine($"non-finite loss at step {step}"); return 3; }
            }
        return 0;
    }

    private static double Cosine(IReadOnlyList<Tensor> a, IReadOnlyList<Tensor> b)
    {
        using var _ = no_grad();
        var u = cat(a.Select(t => t.flatten()).ToArray());
        var v = cat(b.Select(t => t.flatten()).ToArray());
        return u.dot(v).ToDouble() / (u.norm().ToDouble() * v.norm().ToDouble() + 1e-300);
    }
}
