using Lifting.Solvers;
using static TorchSharp.torch;

namespace Lifting.Formulations;

/// The per-example variables of one player, kept in an `ExampleStore` together with their
/// step-rule state and solver memory. `Gather` builds the player's tensors for a mini-batch;
/// `Scatter` writes the updated rows back. New formulations use it for their per-example players.
public sealed class RowGroup
{
    private readonly ExampleStore store;
    private readonly string[] keys;
    private readonly int[] slotCounts, memoryCounts;

    public RowGroup(ExampleStore store, LiftContext context, string player, IReadOnlyList<(string Key, Tensor Rows)> variables)
    {
        this.store = store;
        Player = player;
        keys = variables.Select(v => v.Key).ToArray();
        slotCounts = new int[keys.Length];
        memoryCounts = new int[keys.Length];
        for (int i = 0; i < keys.Length; i++)
        {
            var rows = store.Add(keys[i], variables[i].Rows);
            var state = context.NewState(player, rows, rowIndexed: true);
            slotCounts[i] = state.Slots.Count;
            memoryCounts[i] = state.Memory.Count;
            for (int s = 0; s < state.Slots.Count; s++) store.Add($"{keys[i]}#slot{s}", state.Slots[s]);
            for (int m = 0; m < state.Memory.Count; m++) store.Add($"{keys[i]}#memory{m}", state.Memory[m]);
            state.Dispose(); // the store keeps its own handles
        }
        StepRule = context.StepRuleFor(player);
    }

    public string Player { get; }
    public IStepRule StepRule { get; }
    public IReadOnlyList<string> Keys => keys;

    /// The batch's rows as leaf tensors (requires_grad) with their gathered step states; with
    /// `only`, the entries it accepts (the others null: a layer-parallel segment's untouched cuts).
    public (Tensor[] Variables, StepState[] States) Gather(Tensor indices, Func<int, bool>? only = null)
    {
        var variables = new Tensor[keys.Length];
        var states = new StepState[keys.Length];
        for (int i = 0; i < keys.Length; i++)
        {
            if (only is not null && !only(i)) continue;
            variables[i] = store.Gather(keys[i], indices).requires_grad_(true);
            var slots = Enumerable.Range(0, slotCounts[i]).Select(s => store.Gather($"{keys[i]}#slot{s}", indices)).ToArray();
            var memory = Enumerable.Range(0, memoryCounts[i]).Select(m => store.Gather($"{keys[i]}#memory{m}", indices)).ToArray();
            states[i] = new StepState(slots, memory);
        }
        return (variables, states);
    }

    /// Writes the gathered rows back (null entries, not gathered, are skipped).
    public void Scatter(Tensor indices, Tensor[] variables, StepState[] states)
    {
        for (int i = 0; i < keys.Length; i++)
        {
            if (variables[i] is null) continue;
            store.Scatter(keys[i], indices, variables[i]);
            for (int s = 0; s < slotCounts[i]; s++) store.Scatter($"{keys[i]}#slot{s}", indices, states[i].Slots[s]);
            for (int m = 0; m < memoryCounts[i]; m++) store.Scatter($"{keys[i]}#memory{m}", indices, states[i].Memory[m]);
        }
    }
}
