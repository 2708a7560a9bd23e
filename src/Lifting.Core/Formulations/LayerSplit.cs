using Lifting.Programs;
using static TorchSharp.torch;

namespace Lifting.Formulations;

/// A contiguous range [First, End) of a lifted program's segments (blocks): the part of a
/// layer-parallel run one process evaluates.
public readonly record struct BlockRange(int First, int End)
{
    public bool Contains(int block) => block >= First && block < End;
    public override string ToString() => End - First == 1 ? $"block {First + 1}" : $"blocks {First + 1}-{End}";
}

/// How a range of blocks talks to the neighbouring range across a cut (0-based) at one of its
/// ends: tensors sent under a name arrive at the neighbour in the order they were sent. Both
/// ranges of a cut call it for the same names in the same order.
public interface IBoundaryExchange
{
    /// Sends `value` under `name` to the range on the other side of cut `cut`.
    void Send(int cut, string name, Tensor value);

    /// The next tensor the range on the other side of cut `cut` sent under `name` (waits for it).
    Tensor Receive(int cut, string name);

    /// Completes the gradient of a variable both ranges share (DistProp's class Gaussians): sends
    /// this range's part of Σ_i ∂L_i/∂v and returns the neighbour's.
    Tensor Exchange(int cut, string name, Tensor mine)
    {
        Send(cut, name, mine);
        return Receive(cut, name);
    }
}

/// A lifted problem whose objective is a sum of per-block terms that meet only at the cuts, through
/// shared variables of those cuts (DistProp's class Gaussians): a layer-parallel run gives each
/// process a range of blocks, and the processes exchange only those variables' gradient parts.
/// With every process running the same solver on its range's players, the weights equal the
/// one-process run's bit for bit: each variable's gradient is the same sum of the same terms
/// (two parts, a + b = b + a in floating point), and its step the same step.
public interface ILayerSplittable
{
    /// The segments the split is over (the lifted program, cuts where the formulation puts them).
    NestedProgram LiftedProgram { get; }

    /// What crosses a cut between two ranges each step, in words (for the run folder).
    string Exchanges { get; }

    /// Rows block `block`'s term evaluates per mini-batch of `batchSize` examples (the cost model
    /// of a split): the examples for a block reading them, DistProp's M·S samples for the others.
    long RowsOf(int block, long batchSize);

    /// Restricts every later batch game to the terms and players of `range`; the variables of the
    /// cuts at its ends get the neighbours' gradient parts through `exchange` before every step.
    void Restrict(BlockRange range, IBoundaryExchange exchange);

    /// The keys of `ICheckpointable.StateTensors` that `range` owns: its blocks' weights with their
    /// step states, and the variables of the cuts its blocks end in (a boundary cut belongs to the
    /// lower range; the upper one keeps an equal copy).
    IReadOnlyList<string> Owned(BlockRange range);

    /// Whether `range` reads state tensor `key` (what a push sends it): by default everything but
    /// the per-example store, which only the first range reads.
    bool Reads(BlockRange range, string key) => !key.StartsWith("store/", StringComparison.Ordinal) || range.First == 0;

    /// The keys of `ICheckpointable.StateScalars` whose value `range` alone keeps up to date (a
    /// block's own counter); every other scalar is the same in every range.
    IReadOnlyList<string> OwnedScalars(BlockRange range) => Array.Empty<string>();

    /// Refuses, with an `ArgumentException` naming the reason, a split into `ranges` (in order,
    /// together every block once) that this problem cannot be trained on with `solver`.
    void Validate(IReadOnlyList<BlockRange> ranges, Solvers.ISolver solver) { }
}
