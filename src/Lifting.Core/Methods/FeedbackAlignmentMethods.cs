using Lifting.Formulations;

namespace Lifting;

/// The feedback-alignment family: back-propagation's forward pass and weight updates δ_l h_{l−1}ᵀ,
/// with the signal a layer sends below replaced (`FeedbackAlignment`):
///
///   fa              δ_l = (B_{l+1} δ_{l+1}) ⊙ σ'(a_l), B fixed random (Lillicrap, Cownden, Tweed & Akerman 2016,
///                   "Random synaptic feedback weights support error backpropagation for deep learning", Nat. Commun. 7)
///   sign-symmetric  B_{l+1} = sign(W_{l+1})ᵀ·mean|W_{l+1}| every step (Liao, Leibo & Poggio 2016,
///                   "How important is weight symmetry in backpropagation?", AAAI)
///   dfa             δ_l = (B_l e) ⊙ σ'(a_l), e = ∂ℓ/∂ŷ, B_l fixed random (Nøkland 2016,
///                   "Direct feedback alignment provides learning in deep neural networks", NIPS)
///
/// The weights take the direction with Adam (lr 1e-3), as back-propagation does here.
internal static class FeedbackAlignmentMethods
{
    internal static IEnumerable<MethodDefinition> All => new[]
    {
        Method(FeedbackKind.Random, "feedback alignment: backprop's backward pass with each W^T replaced by a fixed random matrix B (Lillicrap et al. 2016)") with { Representative = true },
        Method(FeedbackKind.Direct, "direct feedback alignment: the output error sent to every hidden layer through a fixed random matrix, delta_l = (B_l e) * sigma'(a_l) (Nøkland 2016)"),
        Method(FeedbackKind.SignSymmetric, "sign-symmetric feedback: backprop's backward pass with each W^T replaced by sign(W)^T mean|W| (Liao, Leibo & Poggio 2016)"),
    };

    private static MethodDefinition Method(FeedbackKind kind, string description) => new(FeedbackAlignment.DefaultName(kind), description,
        new[] { PlayerRules.Solver("gda") }
            .Concat(PlayerRules.StepRule(PlayerNames.Weights, "adam", 1e-3))
            .Append(PlayerRules.Schedule("constant"))
            .ToArray(),
        a =>
        {
            var formulation = new FeedbackAlignment(kind);
            return new MethodParts(formulation, PlayerRules.Solver(a, formulation), PlayerRules.Build(a, formulation));
        }) { Family = "feedback-alignment" };
}
