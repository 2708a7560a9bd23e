using static TorchSharp.torch;

namespace Lifting.Solvers;

/// Mirror maps for mirror-prox (Nemirovski 2004; seed 000 §5 "Bregman proximal").
public static class MirrorMaps
{
    /// φ = ½‖x‖²: the prox step is x − d, so mirror-prox is extragradient.
    public static IMirrorMap Euclidean { get; } = new EuclideanMap();

    /// Negative entropy on the positive orthant (unnormalised KL): x ← x ⊙ exp(−d).
    public static IMirrorMap Entropic { get; } = new EntropicMap(normalise: false);

    /// Negative entropy on the probability simplex along the last dimension (KL):
    /// x ← normalise(x ⊙ exp(−d)), multiplicative weights.
    public static IMirrorMap Simplex { get; } = new EntropicMap(normalise: true);

    private sealed class EntropicMap : IMirrorMap
    {
        private readonly bool normalise;
        public EntropicMap(bool normalise) => this.normalise = normalise;
        public string Name => normalise ? "simplex" : "entropic";
        public Tensor Step(Tensor x, Tensor displacement)
        {
            // In log space for stability: log x − d, then exp (and softmax for the simplex).
            var logits = x.clamp_min(Scalars.Of(1e-30)).log() - displacement;
            return normalise ? logits.softmax(-1) : logits.exp();
        }
    }

    private sealed class EuclideanMap : IMirrorMap
    {
        public string Name => "euclidean";
        public Tensor Step(Tensor x, Tensor displacement) => x - displacement;
    }
}
