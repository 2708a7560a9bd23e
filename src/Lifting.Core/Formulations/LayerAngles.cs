using Lifting.Programs;
using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Formulations;

/// The per-layer diagnostic of the methods that replace back-propagation's backward pass
/// (feedback alignment, deeply supervised nets): for each layer with parameters K (numbered from 1
/// at the input), `angle-K` is the angle in degrees between the method's direction for that layer's
/// parameters (weight and bias together) and back-propagation's gradient of the mean loss on the
/// same batch: 0 when the method steps as back-propagation does, 90 when it is orthogonal (or when
/// either direction vanishes), above 90 when it climbs. Lillicrap et al. (2016, Fig. 2) plot this
/// angle for the hidden layer of a feedback-alignment network: it falls from about 90 as the forward
/// weights come to align with the fixed feedback.
public static class LayerAngles
{
    /// Examples in the probe batch: the first ones of the training set.
    public const int ProbeSize = 256;

    /// The probe batch: the first `ProbeSize` training examples, in the run's dtype.
    public static (Tensor Inputs, Tensor Labels) ProbeBatch(LiftContext context)
    {
        var n = Math.Min(ProbeSize, context.Train.Count);
        var x = context.Train.Inputs.narrow(0, 0, n).to(context.DType).to(context.Device);
        var y = context.Train.Labels.narrow(0, 0, n).to(context.Device);
        return (x, y);
    }

    /// `angle-K` for every layer with parameters: `direction` (one tensor per parameter, in the
    /// program's order) against back-propagation's gradient on (x, y) at `weights`.
    public static IReadOnlyDictionary<string, double> ToBackprop(NestedProgram program, IReadOnlyList<Tensor> weights, IReadOnlyList<Tensor> direction, Tensor x, Tensor y, ForwardPass? pass = null)
    {
        using var scope = NewDisposeScope();
        Tensor[] reference;
        using (enable_grad())
        {
            var loss = program.Loss.PerExample(program.Forward(x, weights, pass), y).mean();
            reference = autograd.grad(new[] { loss }, weights.ToArray()).Select(t => t.detach()).ToArray();
        }
        return Between(program, direction, reference);
    }

    /// `angle-K` between two directions given per parameter, per layer with parameters.
    public static IReadOnlyDictionary<string, double> Between(NestedProgram program, IReadOnlyList<Tensor> a, IReadOnlyList<Tensor> b)
    {
        if (a.Count != program.ParameterSpecs.Count || b.Count != program.ParameterSpecs.Count)
            throw new ArgumentException($"Expected {program.ParameterSpecs.Count} tensors per direction, got {a.Count} and {b.Count}.");
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var angles = new Dictionary<string, double>();
        int number = 0;
        var seen = new HashSet<int>();
        // Per node with parameters not seen before (a tied parameter belongs to its first user).
        foreach (var node in program.Nodes)
        {
            var own = node.Parameters.Where(seen.Add).ToArray();
            if (own.Length == 0) continue;
            number++;
            var u = cat(own.Select(i => a[i].flatten()).ToArray()).to_type(ScalarType.Float64);
            var v = cat(own.Select(i => b[i].flatten()).ToArray()).to_type(ScalarType.Float64);
            double nu = u.norm().ToDouble(), nv = v.norm().ToDouble();
            double cosine = nu > 0 && nv > 0 ? Math.Clamp(u.dot(v).ToDouble() / (nu * nv), -1, 1) : 0;
            angles[$"angle-{number}"] = Math.Acos(cosine) * 180 / Math.PI;
        }
        return angles;
    }
}
