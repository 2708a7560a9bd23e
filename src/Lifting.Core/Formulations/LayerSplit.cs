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

/// What a lifted problem split by blocks keeps of its split: the range its games evaluate (null:
/// every block) and the link to the neighbouring ranges, with the bookkeeping every splittable
/// formulation shares. Block l reads cut l − 1 and ends in cut l (0-based), so a range of a chain
/// touches cuts First − 1 … End − 1.
public sealed class SplitState
{
    private readonly NestedProgram program;

    public SplitState(NestedProgram program) => this.program = program;

    public BlockRange? Range { get; private set; }
    public IBoundaryExchange? Link { get; private set; }
    private int BlockCount => program.Segments.Count;

    public void Restrict(BlockRange range, IBoundaryExchange link)
    {
        if (range.First < 0 || range.End > BlockCount || range.First >= range.End)
            throw new ArgumentOutOfRangeException(nameof(range), $"{range} is not a range of this program's {BlockCount} blocks.");
        Range = range;
        Link = link;
    }

    /// The blocks a game evaluates, [First, End).
    public (int First, int End) Blocks => Range is { } r ? (r.First, r.End) : (0, BlockCount);

    /// Whether the range reads or writes cut `cut`.
    public bool Touches(int cut) => Range is not { } r || Touches(cut, r);

    /// Whether `range`'s blocks read or write cut `cut`.
    public static bool Touches(int cut, BlockRange range) => cut >= range.First - 1 && cut < range.End;

    /// A cut at either end of the range, whose variables a neighbouring range shares.
    public bool IsBoundary(int cut) => Range is { } r && ((r.First > 0 && cut == r.First - 1) || (cut == r.End - 1 && r.End < BlockCount));

    /// The parameters of `range`'s blocks, ascending.
    public int[] Parameters(BlockRange range) =>
        Enumerable.Range(range.First, range.End - range.First).SelectMany(l => program.Segments[l].Parameters).Distinct().Order().ToArray();

    /// The keys of `all` (`ICheckpointable.StateTensors`) that are `range`'s blocks' weights (with
    /// their step states) or in `others` (by name, step states included).
    public IReadOnlyList<string> Owned(IEnumerable<string> all, BlockRange range, IEnumerable<string> others)
    {
        var names = program.ParameterNames;
        var owned = Parameters(range).Select(p => $"weights/{names[p]}").Concat(others).ToHashSet();
        return all.Where(k => owned.Contains(k.Split('#')[0])).ToArray();
    }

    /// Refuses a split in which a block reads a value below its range's lower cut: only the cut
    /// between neighbouring ranges is shared.
    public void RequireNeighbouringCuts(IReadOnlyList<BlockRange> ranges)
    {
        foreach (var r in ranges)
            for (int l = r.First; l < r.End; l++)
                foreach (var u in program.Segments[l].InputSegments)
                    if (u >= 0 && u < r.First - 1)
                        throw new ArgumentException($"layer-parallel training: block {l + 1} ({r}) reads block {u + 1}, below the range's lower cut; only the cut between neighbouring ranges is shared (split elsewhere or use fewer segments)");
    }

    /// Adds the neighbours' parts to the gradient sums of the boundary cuts' variables among
    /// `inputs` (`BatchGame.CompleteGradients`): variable i of `variables` belongs to cut `cutOf(i)`
    /// and is exchanged under `nameOf(i)`.
    public void CompleteGradients(IReadOnlyList<Tensor> inputs, Tensor?[] grads, IReadOnlyList<Tensor> variables, Func<int, int> cutOf, Func<int, string> nameOf)
    {
        if (Link is not { } link) return;
        for (int k = 0; k < inputs.Count; k++)
        {
            int i = -1;
            for (int j = 0; j < variables.Count && i < 0; j++)
                if (ReferenceEquals(variables[j], inputs[k])) i = j; // not IndexOf: Tensor.Equals compares values
            if (i < 0 || !IsBoundary(cutOf(i))) continue;
            var mine = grads[k] is { IsInvalid: false } g ? g : zeros_like(inputs[k]);
            using var theirs = link.Exchange(cutOf(i), nameOf(i), mine);
            grads[k] = mine.Plus(theirs);
        }
    }
}
