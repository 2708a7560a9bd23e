using System.Globalization;
using Lifting.Solvers;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace Lifting.Formulations;

/// What a term of a lifted objective evaluates to: a number on the host (a coefficient, possibly
/// scheduled), a tensor with one row per example (g_v, λ_v and what is computed from them), or a
/// number summed over the mini-batch (the loss, a norm, an inner product).
public enum TermKind { Coefficient, PerExample, Summed }

/// Where a variable of an equation lives (issue 29).
public enum Placement
{
    /// One per training example, kept across epochs in the per-example store (multiple shooting's
    /// h_v and λ_v).
    Example,
    /// One per class, shared by the class's examples and read at each example's label (DistProp's
    /// λ_l(c), seed 001 Algorithm 1): its size does not grow with the dataset.
    Class,
    /// One per example of the mini-batch, started for each batch (states at the forward pass,
    /// multipliers at 0) and discarded after it: nothing is kept between batches.
    Batch,
}

/// A term of a lifted objective over the multiple-shooting constraints g_v = h_v − f_v(inputs of v),
/// written as the equation it is (issue 29):
///
///     Lagrangian:             ℓ + Σ_v ⟨λ_v, g_v⟩                 Term.Loss + Term.OverConstraints(Term.Inner(Term.Multiplier, Term.Defect))
///     augmented Lagrangian:   ℓ + Σ_v ⟨λ_v, g_v⟩ + (c/2)‖g_v‖²
///     quadratic penalty:      ℓ + (μ/2) Σ_v ‖g_v‖²               μ = Term.Schedule("mu", …) grows per epoch
///     exact penalty:          ℓ + μ Σ_v ‖g_v‖₁
///
/// `EquationFormulation` derives the rest: per-example states h_v (minimised, started at the forward
/// pass), per-example multipliers λ_v when the equation has them (maximised; boxed to [−cap, cap]
/// when written `Term.CappedMultiplier(cap)`), the batch game, the defects, checkpoints (schedules
/// included) and the printed form. Sums are over the mini-batch; the trainer divides by its size.
/// Terms are immutable; `+`, `*`, `/` and numbers combine them.
public abstract class Term
{
    private protected Term() { }

    public abstract TermKind Kind { get; }

    /// ℓ(ŷ, y) summed over the batch, at the output of the lifted program.
    public static Term Loss { get; } = new LossTerm();
    /// g_v = h_v − f_v(inputs of v): the constraint of the lifted value v (inside `OverConstraints`).
    public static Term Defect { get; } = new DefectTerm();
    /// λ_v: a per-example multiplier of the constraint of v, maximised (inside `OverConstraints`).
    public static Term Multiplier { get; } = new MultiplierTerm(double.PositiveInfinity, Placement.Example);
    /// λ_v(y): one multiplier per class and constraint, read at each example's label.
    public static Term ClassMultiplier { get; } = new MultiplierTerm(double.PositiveInfinity, Placement.Class);
    /// λ_v per example of the mini-batch, started at 0 for each batch and discarded after it.
    public static Term BatchMultiplier { get; } = new MultiplierTerm(double.PositiveInfinity, Placement.Batch);
    /// λ_v (placed per example unless told) projected onto [−cap, cap] after every step (an
    /// inexact, bounded-multiplier method).
    public static Term CappedMultiplier(double cap, Placement placement = Placement.Example) =>
        cap > 0 && !double.IsNaN(cap) ? new MultiplierTerm(cap, placement) : throw new ArgumentOutOfRangeException(nameof(cap), $"Invalid multiplier cap: {cap} (expected a value > 0).");
    /// Σ_v term(v) over the lifted values (the constraints) in topological order.
    public static Term OverConstraints(Term perConstraint) => new ConstraintSum(perConstraint);
    /// A constant coefficient.
    public static Term Constant(double value) =>
        double.IsFinite(value) ? new ConstantTerm(value) : throw new ArgumentOutOfRangeException(nameof(value), $"Invalid constant: {value} (expected a finite number).");
    /// A coefficient on a schedule: `initial`, multiplied by `growth` after every epoch, capped at
    /// `maximum` (kept in checkpoints under `name`).
    public static Term Schedule(string name, double initial, double growth = 1, double maximum = double.PositiveInfinity)
    {
        if (string.IsNullOrWhiteSpace(name)) throw new ArgumentException("A schedule needs a name.", nameof(name));
        var schedule = new PenaltySchedule(initial, growth, maximum);
        schedule.Validate();
        return new ScheduleTerm(name, schedule);
    }
    /// ⟨a, b⟩ summed over the batch.
    public static Term Inner(Term a, Term b) => new Reduction(ReductionKind.Inner, a, b);
    /// ‖a‖² summed over the batch.
    public static Term SquaredNorm(Term a) => new Reduction(ReductionKind.SquaredNorm, a, null);
    /// ‖a‖₁ summed over the batch.
    public static Term Norm1(Term a) => new Reduction(ReductionKind.Norm1, a, null);
    /// The ε-insensitive (soft-thresholded) a: a − ε above ε, a + ε below −ε, 0 between (seed 001 eq. 3).
    public static Term Shrink(double epsilon, Term a) =>
        epsilon >= 0 && double.IsFinite(epsilon) ? new ShrinkTerm(epsilon, a) : throw new ArgumentOutOfRangeException(nameof(epsilon), $"Invalid epsilon: {epsilon} (expected a finite value >= 0).");

    public static Term operator +(Term a, Term b) => new Sum(a, b);
    public static Term operator +(Term a, double b) => new Sum(a, Constant(b));
    public static Term operator +(double a, Term b) => new Sum(Constant(a), b);
    public static Term operator *(Term a, Term b) => new Product(a, b);
    public static Term operator *(double a, Term b) => new Product(Constant(a), b);
    public static Term operator *(Term a, double b) => new Product(a, Constant(b));
    public static Term operator /(Term a, double b) => new Quotient(a, Constant(b));
    public static Term operator /(Term a, Term b) => new Quotient(a, b);
    public static Term operator -(Term a) => new Product(Constant(-1), a);
    public static Term operator -(Term a, Term b) => new Sum(a, -b);

    public abstract override string ToString();

    /// The sub-terms (for validation).
    internal abstract IEnumerable<Term> Children { get; }

    /// Every term in this one, itself included.
    internal IEnumerable<Term> Descendants() => new[] { this }.Concat(Children.SelectMany(c => c.Descendants()));

    /// The degree of the term in the multipliers (int.MaxValue: not a polynomial in them).
    internal abstract int MultiplierDegree { get; }

    /// The term's value on the host (coefficients only).
    internal virtual double Coefficient(EquationValues values) => throw new InvalidOperationException($"'{this}' is not a number on the host.");

    /// The term's value as a tensor (per example, or summed over the batch).
    internal abstract Tensor Evaluate(EquationValues values);

    /// `total` plus the term; sums are added term by term in the order written (so an equation adds
    /// in the order a hand-written objective does).
    internal virtual Tensor AddTo(Tensor total, EquationValues values) => total.Plus(Evaluate(values));

    internal static string Number(double v) => v.ToString("G6", CultureInfo.InvariantCulture);
}

/// What the terms read while the game evaluates them.
internal sealed class EquationValues
{
    public Func<string, double> Schedule { get; init; } = _ => throw new InvalidOperationException("No schedules.");
    public Tensor? Loss { get; init; }
    public Tensor? Constraints { get; init; }
    public Tensor? Defect { get; init; }
    public Tensor? Multiplier { get; init; }
    /// Reductions sum per example (one value per row) instead of over the batch.
    public bool PerExample { get; init; }

    public Tensor Reduce(Tensor t) => PerExample ? t.reshape(t.shape[0], -1).sum(1) : t.sum();
}

internal sealed class LossTerm : Term
{
    public override TermKind Kind => TermKind.Summed;
    public override string ToString() => "ℓ";
    internal override IEnumerable<Term> Children => Array.Empty<Term>();
    internal override int MultiplierDegree => 0;
    internal override Tensor Evaluate(EquationValues values) => values.Loss ?? throw new InvalidOperationException("The loss is not available here.");
}

internal sealed class DefectTerm : Term
{
    public override TermKind Kind => TermKind.PerExample;
    public override string ToString() => "g_v";
    internal override IEnumerable<Term> Children => Array.Empty<Term>();
    internal override int MultiplierDegree => 0;
    internal override Tensor Evaluate(EquationValues values) => values.Defect ?? throw new InvalidOperationException("g_v is only defined under Σ_v.");
}

internal sealed class MultiplierTerm(double cap, Placement placement) : Term
{
    public double Cap { get; } = cap;
    public Placement Placement { get; } = placement;
    public override TermKind Kind => TermKind.PerExample;
    private string Symbol => Placement == Placement.Class ? "λ_v(y)" : "λ_v";
    public override string ToString() => double.IsPositiveInfinity(Cap) ? Symbol : $"clip({Symbol}, {Number(Cap)})";
    internal override IEnumerable<Term> Children => Array.Empty<Term>();
    internal override int MultiplierDegree => 1;
    internal override Tensor Evaluate(EquationValues values) => values.Multiplier ?? throw new InvalidOperationException("λ_v is only defined under Σ_v.");
}

internal sealed class ConstantTerm(double value) : Term
{
    public double Value { get; } = value;
    public override TermKind Kind => TermKind.Coefficient;
    public override string ToString() => Number(Value);
    internal override IEnumerable<Term> Children => Array.Empty<Term>();
    internal override int MultiplierDegree => 0;
    internal override double Coefficient(EquationValues values) => Value;
    internal override Tensor Evaluate(EquationValues values) => throw new InvalidOperationException($"'{this}' is a number on the host.");
}

internal sealed class ScheduleTerm(string name, PenaltySchedule schedule) : Term
{
    public string Name { get; } = name;
    public PenaltySchedule Plan { get; } = schedule;
    public override TermKind Kind => TermKind.Coefficient;
    public override string ToString() => Name;
    public string Describe() => Plan.Growth > 1
        ? $"{Name} from {Number(Plan.Initial)} ×{Number(Plan.Growth)} per epoch" + (double.IsPositiveInfinity(Plan.Maximum) ? "" : $" up to {Number(Plan.Maximum)}")
        : $"{Name} = {Number(Plan.Initial)}";
    internal override IEnumerable<Term> Children => Array.Empty<Term>();
    internal override int MultiplierDegree => 0;
    internal override double Coefficient(EquationValues values) => values.Schedule(Name);
    internal override Tensor Evaluate(EquationValues values) => throw new InvalidOperationException($"'{this}' is a number on the host.");
}

internal sealed class ConstraintSum(Term perConstraint) : Term
{
    public Term PerConstraint { get; } = perConstraint;
    public override TermKind Kind => TermKind.Summed;
    public override string ToString() => PerConstraint is Sum ? $"Σ_v ({PerConstraint})" : $"Σ_v {PerConstraint}";
    internal override IEnumerable<Term> Children => new[] { PerConstraint };
    internal override int MultiplierDegree => PerConstraint.MultiplierDegree;
    internal override Tensor Evaluate(EquationValues values) => values.Constraints ?? throw new InvalidOperationException("Σ_v is evaluated by the game.");
}

internal sealed class Sum(Term a, Term b) : Term
{
    public Term A { get; } = a;
    public Term B { get; } = b;
    public override TermKind Kind => A.Kind;
    public override string ToString() => B is Product { A: ConstantTerm { Value: < 0 } } ? $"{A} − {((Product)B).Negated()}" : $"{A} + {B}";
    internal override IEnumerable<Term> Children => new[] { A, B };
    internal override int MultiplierDegree => Math.Max(A.MultiplierDegree, B.MultiplierDegree);
    internal override double Coefficient(EquationValues values) => A.Coefficient(values) + B.Coefficient(values);
    internal override Tensor Evaluate(EquationValues values) => A.Evaluate(values).Plus(B.Evaluate(values));
    internal override Tensor AddTo(Tensor total, EquationValues values) => B.AddTo(A.AddTo(total, values), values);
}

internal sealed class Product(Term a, Term b) : Term
{
    public Term A { get; } = a;
    public Term B { get; } = b;
    public override TermKind Kind => (A.Kind, B.Kind) switch
    {
        (TermKind.Coefficient, var k) => k,
        (var k, TermKind.Coefficient) => k,
        _ => TermKind.PerExample, // elementwise; (summed, summed) is refused by the validation
    };
    public string Negated() => A is ConstantTerm { Value: -1 } ? Wrap(B) : $"{Number(-((ConstantTerm)A).Value)}·{Wrap(B)}";
    public override string ToString() => A is ConstantTerm { Value: -1 } ? $"−{Wrap(B)}" : $"{Wrap(A)}·{Wrap(B)}";
    private static string Wrap(Term t) => t is Sum ? $"({t})" : t.ToString();
    internal override IEnumerable<Term> Children => new[] { A, B };
    internal override int MultiplierDegree => Saturating(A.MultiplierDegree, B.MultiplierDegree);
    internal static int Saturating(int a, int b) => a == int.MaxValue || b == int.MaxValue ? int.MaxValue : a + b;
    internal override double Coefficient(EquationValues values) => A.Coefficient(values) * B.Coefficient(values);
    internal override Tensor Evaluate(EquationValues values) => (A.Kind, B.Kind) switch
    {
        (TermKind.Coefficient, _) => B.Evaluate(values).mul(Scalars.Of(A.Coefficient(values))),
        (_, TermKind.Coefficient) => A.Evaluate(values).mul(Scalars.Of(B.Coefficient(values))),
        _ => A.Evaluate(values) * B.Evaluate(values),
    };
}

internal sealed class Quotient(Term a, Term b) : Term
{
    public Term A { get; } = a;
    public Term B { get; } = b;
    public override TermKind Kind => A.Kind;
    public override string ToString() => $"{(A is Sum or Product ? $"({A})" : A.ToString())}/{(B is Sum or Product ? $"({B})" : B.ToString())}";
    internal override IEnumerable<Term> Children => new[] { A, B };
    internal override int MultiplierDegree => A.MultiplierDegree;
    internal override double Coefficient(EquationValues values) => A.Coefficient(values) / B.Coefficient(values);
    internal override Tensor Evaluate(EquationValues values) => A.Evaluate(values).div(Scalars.Of(B.Coefficient(values)));
}

internal enum ReductionKind { Inner, SquaredNorm, Norm1 }

internal sealed class Reduction(ReductionKind reduction, Term a, Term? b) : Term
{
    public ReductionKind Reduce { get; } = reduction;
    public Term A { get; } = a;
    public Term? B { get; } = b;
    public override TermKind Kind => TermKind.Summed;
    public override string ToString() => Reduce switch
    {
        ReductionKind.Inner => $"⟨{A}, {B}⟩",
        ReductionKind.SquaredNorm => $"‖{A}‖²",
        _ => $"‖{A}‖₁",
    };
    internal override IEnumerable<Term> Children => B is null ? new[] { A } : new[] { A, B };
    internal override int MultiplierDegree => Reduce switch
    {
        ReductionKind.Inner => Product.Saturating(A.MultiplierDegree, B!.MultiplierDegree),
        ReductionKind.SquaredNorm => A.MultiplierDegree == 0 ? 0 : Product.Saturating(A.MultiplierDegree, A.MultiplierDegree),
        _ => A.MultiplierDegree == 0 ? 0 : int.MaxValue,
    };
    internal override Tensor Evaluate(EquationValues values) => Reduce switch
    {
        ReductionKind.Inner => values.Reduce(A.Evaluate(values) * B!.Evaluate(values)),
        ReductionKind.SquaredNorm => values.Reduce(A.Evaluate(values).Squared()),
        _ => values.Reduce(A.Evaluate(values).abs()),
    };
}

internal sealed class ShrinkTerm(double epsilon, Term a) : Term
{
    public double Epsilon { get; } = epsilon;
    public Term A { get; } = a;
    public override TermKind Kind => TermKind.PerExample;
    public override string ToString() => $"shrink_{Number(Epsilon)}({A})";
    internal override IEnumerable<Term> Children => new[] { A };
    internal override int MultiplierDegree => A.MultiplierDegree == 0 ? 0 : int.MaxValue;
    internal override Tensor Evaluate(EquationValues values) => Epsilon > 0 ? F.softshrink(A.Evaluate(values), Epsilon) : A.Evaluate(values);
}
