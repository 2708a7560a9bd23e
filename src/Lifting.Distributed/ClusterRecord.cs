namespace Lifting.Distributed;

/// Where a distributed run's replicas or segments live and what happened to them (cluster.json's
/// layout and events), readable from any thread.
public sealed class ClusterRecord
{
    private readonly object gate = new();
    private readonly ReplicaPlace?[] places;
    private readonly List<ClusterEvent> events = new();
    private readonly Action<string>? log;

    public ClusterRecord(int count, Action<string>? log)
    {
        places = new ReplicaPlace?[count];
        this.log = log;
    }

    /// Mini-batches per epoch, to date an event given by its step.
    public int BatchesPerEpoch { get; set; } = 1;

    public IReadOnlyList<ReplicaPlace?> Layout { get { lock (gate) return places.ToArray(); } }
    public IReadOnlyList<ClusterEvent> Events { get { lock (gate) return events.ToArray(); } }
    /// Raised (on any thread) when the layout or the events change.
    public event Action? Changed;

    /// Where member k lives, or null before it joined.
    public ReplicaPlace? this[int k] { get { lock (gate) return places[k]; } }

    /// Member k now lives at `place`; returns where it lived before (null: it had not joined).
    public ReplicaPlace? Place(ReplicaPlace place)
    {
        ReplicaPlace? before;
        lock (gate)
        {
            before = places[place.Replica];
            places[place.Replica] = place;
        }
        Changed?.Invoke();
        return before;
    }

    public void Event(long? step, string text)
    {
        int? epoch = step is { } s ? (int)(s / BatchesPerEpoch) + 1 : null;
        lock (gate) events.Add(new ClusterEvent(DateTimeOffset.UtcNow, epoch, step, text));
        log?.Invoke(text);
        Changed?.Invoke();
    }
}

/// Waiting on a coordinator's tasks from the trainer's thread, with the task's own exception.
internal static class Blocking
{
    public static void Wait(Task task)
    {
        try { task.GetAwaiter().GetResult(); }
        catch (AggregateException a) when (a.InnerException is not null) { throw a.InnerException; }
    }

    public static T Wait<T>(Task<T> task)
    {
        try { return task.GetAwaiter().GetResult(); }
        catch (AggregateException a) when (a.InnerException is not null) { throw a.InnerException; }
    }

    public static string OneLine(string s) => s.ReplaceLineEndings(" ").Trim();
}
