namespace Lifting.FSharp

open Lifting.Formulations

/// Lifted objectives written as equations (issue 29). The multiple-shooting Lagrangian is
///
///     Equation.formulation "my-lagrangian" (loss + sumConstraints (inner lambda g))
///
/// (or, after `open Lifting.FSharp.Equation`, `formulation "my-lagrangian" (loss + sumConstraints (inner lambda g))`); `+`, `*` and `/` combine terms with each other and with
/// numbers. `EquationFormulation` derives the players, the game, the checkpoints and the printed
/// form, and refuses a malformed equation with one line naming the term.
module Equation =
    /// ℓ summed over the batch.
    let loss = Term.Loss
    /// g_v = h_v − f_v(inputs of v), the constraint of lifted value v (under `sumConstraints`).
    let g = Term.Defect
    /// λ_v, the per-example multiplier of g_v, maximised.
    let lambda = Term.Multiplier
    /// λ_v(y): one multiplier per class and constraint, read at each example's label.
    let lambdaPerClass = Term.ClassMultiplier
    /// λ_v per example of the mini-batch, started at 0 for each batch and dropped after it.
    let lambdaPerBatch = Term.BatchMultiplier
    /// λ_v boxed to [−cap, cap] after every step.
    let lambdaCapped (cap: float) = Term.CappedMultiplier cap
    /// Σ_v over the constraints.
    let sumConstraints (term: Term) = Term.OverConstraints term
    /// ⟨a, b⟩ summed over the batch.
    let inner (a: Term) (b: Term) = Term.Inner(a, b)
    /// ‖a‖² summed over the batch.
    let sqnorm (a: Term) = Term.SquaredNorm a
    /// ‖a‖₁ summed over the batch.
    let norm1 (a: Term) = Term.Norm1 a
    /// The ε-insensitive a (soft thresholding, seed 001 eq. 3).
    let shrink (epsilon: float) (a: Term) = Term.Shrink(epsilon, a)
    /// A coefficient `initial` × `growth` per epoch, capped at `maximum`, checkpointed as `name`.
    let growing (name: string) (initial: float) (growth: float) (maximum: float) = Term.Schedule(name, initial, growth, maximum)
    /// The formulation of an equation (one step of every player in turn for the alternating solver).
    let formulation (name: string) (objective: Term) = EquationFormulation(name, objective) :> IFormulation
    /// A contrastive formulation of an energy over the levels (seed 002's surrogate, 20 inference
    /// steps, β = 0.1): E must be a gap, norms of g_v with non-negative coefficients.
    let energy (name: string) (e: Term) = EquationContrastive(name, e) :> IFormulation
    /// The same with contrastive options (β, inference steps, symmetric, linearised).
    let energyWith (options: ContrastiveOptions) (name: string) (e: Term) = EquationContrastive(name, e, options) :> IFormulation
    /// The formulation with options (an alternating schedule, the feasibility pass at the end).
    let formulationWith (options: EquationOptions) (name: string) (objective: Term) = EquationFormulation(name, objective, options) :> IFormulation
