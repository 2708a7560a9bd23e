using static TorchSharp.torch;

namespace Lifting.Solvers;

/// Mirror maps for mirror-prox (Nemirovski 2004; seed 000 §5 "Bregman proximal").
public static class MirrorMaps
{
    /// φ = ½‖x‖²: the prox step is x − d, so mirror-prox is extragradient.
    public static IMirrorMap Euclidean { get; } = new EuclideanMap();

    private sealed class EuclideanMap : IMirrorMap
    {
        public string Name => "euclidean";
        public Tensor Step(Tensor x, Tensor displacement) => x - displacement;
    }
}
