using Lifting.Data;
using Lifting.Formulations;
using Lifting.Programs;
using Lifting.Solvers;
using Lifting.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Examples;

/// What ExtraProp's per-example rows do, measured (docs/methods.md cites its output).
///
/// Trains 784-256-10 on MNIST-10k with the multiple-shooting Lagrangian, extragradient, `inner`
/// inner iterations on the rows and ExtraAdam weights at a constant step, and reports per epoch,
/// after the inner iterations of each batch: the multipliers' relative error against the adjoint
/// −∂ℓ/∂h at the current states, and the cosine between the weights' direction and the
/// back-propagation gradient. `ext-states=γ_h ext-multipliers=γ_λ` make the inner iterations
/// extrapolate with γ times the rows' steps (`Solvers.Extragradient(scale)`). With `settle=S` it then holds the weights for S epochs while the rows
/// iterate with the state step ×`settle-states` and the multiplier step ÷`settle-states`, and
/// reports the defect per epoch, the defect by the loss curvature κ = λ_max(W₂ᵀ S W₂) of each
/// example, and the iteration of the worst row alone.
///
///   probe [epochs=10] [lr=2e-3] [lr-states=0.5] [lr-multipliers=1] [inner=1] [batches=0]
///         [ext-states=1] [ext-multipliers=1] [settle=0] [settle-states=1] [seed=0]
public static class Probe
{
    public static int Run(Settings settings)
    {
        int epochs = (int)settings.Real("epochs", 10), inner = (int)settings.Real("inner", 1), shown = (int)settings.Real("batches", 0);
        int settleEpochs = (int)settings.Real("settle", 0), seed = (int)settings.Real("seed", 0);
        double a = settings.Real("lr-states", 0.5), b = settings.Real("lr-multipliers", 1.0), scale = settings.Real("settle-states", 1.0);

        using var data = DatasetCatalog.Load("mnist-10k");
        var program = Net.Mlp(data.Train.ExampleShape, new long[] { 784, 256, 10 }, Activations.ReLU, Losses.CrossEntropy);
        double settle = settleEpochs / (double)(epochs + settleEpochs);
        var states = Schedules.Settling(StepRules.Constant(a), settle, scale);
        var multipliers = Schedules.Settling(StepRules.Constant(b), settle, 1 / scale);
        var rules = new Dictionary<string, IStepRule>
        {
            [PlayerNames.Weights] = StepRules.Adam(settings.Real("lr", 2e-3)),
            [PlayerNames.States] = states,
            [PlayerNames.Multipliers] = multipliers,
        };
        var rows = new[] { PlayerNames.States, PlayerNames.Multipliers };
        var extragradient = Solvers.Solvers.Extragradient();
        double gh = settings.Real("ext-states", 1), gl = settings.Real("ext-multipliers", 1);
        var innerSolver = gh == 1 && gl == 1 ? extragradient
            : Solvers.Solvers.Extragradient(p => p == PlayerNames.States ? gh : p == PlayerNames.Multipliers ? gl : 1);
        using var weights = program.Initialise(seed);
        var context = new LiftContext(program, data.Train, CPU, ScalarType.Float32, seed, p => rules[p], 0);
        using var problem = new MultipleShooting().Lift(context, weights);

        Console.WriteLine($"probe: extragradient, {inner} inner iteration(s) extrapolating ×({gh}, {gl}), rows ({a}, {b}), {epochs} epochs then {settleEpochs} settling with the state step ×{scale}");
        for (int epoch = 1; epoch <= epochs + settleEpochs; epoch++)
        {
            states.Advance(epoch, epochs + settleEpochs);
            multipliers.Advance(epoch, epochs + settleEpochs);
            bool settling = epoch > epochs;
            double errors = 0, cosines = 0;
            int visited = 0;
            foreach (var batch in MiniBatches.Epoch(data.Train, 128, seed, epoch))
            {
                using var scope = NewDisposeScope();
                using var owned = batch;
                using var game = problem.Batch(batch);
                if (settling)
                {
                    using var view = new Restricted(game, rows);
                    for (int k = 0; k < inner + 1; k++) extragradient.Step(view);
                    game.Commit();
                    continue;
                }
                using (var view = new Restricted(game, rows))
                    for (int k = 0; k < inner; k++) innerSolver.Step(view);
                var cosine = Trainer.CosineToBackprop(program, problem.Weights, game, batch);
                var error = MultiplierError(program, problem.Weights, game, batch);
                extragradient.Step(game);
                game.Commit();
                errors += error;
                cosines += cosine;
                if (++visited <= shown)
                    Console.WriteLine($"  epoch {epoch} batch {visited,3}  λ error {error:F3}  cosine {cosine:F3}  loss {game.Loss:F4}");
            }
            var defect = problem.MeasureDefects().Average();
            if (settling)
                Console.WriteLine($"settle {epoch - epochs,2}  defect {defect:E2}");
            else
            {
                var accuracy = Trainer.Evaluate(program, problem.Weights, data.Validation).Accuracy;
                Console.WriteLine($"epoch {epoch,2}  validation acc {accuracy:F4}  defect {defect:E2}  mean λ error {errors / visited:F3}  mean cosine {cosines / visited:F3}");
            }
        }
        if (settleEpochs > 0) ByCurvature(program, problem, data, a * scale, b / scale);
        return 0;
    }

    /// ‖λ − λ*‖ / ‖λ*‖ with λ* = −∂ℓ/∂h at the batch's current states (two-block programs).
    private static double MultiplierError(NestedProgram program, Weights weights, IBatchGame game, MiniBatch batch)
    {
        var h = game.Players.First(p => p.Name == PlayerNames.States).Variables[0];
        var lambda = game.Players.First(p => p.Name == PlayerNames.Multipliers).Variables[0];
        using var _ = enable_grad();
        var free = h.detach().requires_grad_(true);
        var loss = program.Loss.PerExample(program.ForwardBlock(1, free, program.BlockWeights(weights.Tensors, 1)), batch.Labels).sum();
        var adjoint = -autograd.grad(new[] { loss }, new[] { free })[0];
        return ((lambda.detach() - adjoint).norm() / (adjoint.norm() + 1e-30)).ToDouble();
    }

    /// The defect by curvature bucket, then the worst row iterated alone with steps (a, b).
    private static void ByCurvature(NestedProgram program, ILiftedProblem problem, DataSplit data, double a, double b)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var h = problem.Store["h1"];
        var lambda = problem.Store["lambda1"];
        var w = problem.Weights.Tensors;
        var forward = program.ForwardBlock(0, data.Train.Inputs, program.BlockWeights(w, 0));
        var defects = (h - forward).abs().mean(new long[] { 1 });
        var w2 = program.BlockWeights(w, 1)[0];
        var p = program.ForwardBlock(1, h, program.BlockWeights(w, 1)).softmax(1);
        var softmaxHessian = diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1);
        // The nonzero eigenvalues of W₂ᵀ S W₂ are those of S W₂ W₂ᵀ (10 × 10).
        var kappa = linalg.eigvals(softmaxHessian.matmul(w2.matmul(w2.t()))).real.max(1).values;
        Console.WriteLine("defect by curvature κ of the loss in the state:");
        foreach (var (lo, hi) in new[] { (0.0, 0.5), (0.5, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0), (4.0, double.PositiveInfinity) })
        {
            var mask = kappa.ge(lo).logical_and(kappa.lt(hi));
            var n = mask.sum().ToInt64();
            if (n == 0) continue;
            var share = defects.masked_select(mask).sum().ToDouble() / defects.sum().ToDouble();
            Console.WriteLine($"  κ in [{lo}, {hi}): {n,5} examples, mean defect {defects.masked_select(mask).mean().ToDouble():E2}, {share:P0} of the total");
        }

        var worst = defects.argmax().ToInt64();
        var target = forward[worst].unsqueeze(0);
        var label = data.Train.Labels[worst].unsqueeze(0);
        var hr = h[worst].unsqueeze(0).clone();
        var lr = lambda[worst].unsqueeze(0).clone();
        (Tensor, Tensor) Operator(Tensor state, Tensor multiplier)
        {
            using var __ = enable_grad();
            var free = state.detach().requires_grad_(true);
            var loss = program.Loss.PerExample(program.ForwardBlock(1, free, program.BlockWeights(w, 1)), label).sum();
            return (autograd.grad(new[] { loss }, new[] { free })[0] + multiplier, -(state - target));
        }
        Console.WriteLine($"worst row (example {worst}, κ {kappa[worst].ToDouble():F2}), extragradient with steps ({a:G3}, {b:G3}) on it alone:");
        for (int k = 0; k <= 200; k++)
        {
            var (dh, dl) = Operator(hr, lr);
            if (k % 50 == 0)
                Console.WriteLine($"  iteration {k,3}: mean |defect| {(hr - target).abs().mean().ToDouble():E3}, mean |∂L/∂h| {dh.abs().mean().ToDouble():E3}");
            var (eh, el) = Operator(hr - a * dh, lr - b * dl);
            hr = hr - a * eh;
            lr = lr - b * el;
        }
    }
}
