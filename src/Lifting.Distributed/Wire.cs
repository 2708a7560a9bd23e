using Orleans;

namespace Lifting.Distributed;

/// What the coordinator asks a replica to join a run with: the run's resolved settings (a run
/// folder's config.json, which the replica turns into the same program, data and method) and the
/// identity of the coordinator's build. The replica answers with its own identities, which the
/// coordinator compares before the run starts.
[GenerateSerializer]
public sealed class JoinRequest
{
    [Id(0)] public string RunId { get; init; } = "";
    [Id(1)] public int Replica { get; init; }
    [Id(2)] public int Replicas { get; init; }
    [Id(3)] public string Config { get; init; } = "";
    [Id(4)] public string Build { get; init; } = "";
}

[GenerateSerializer]
public sealed class JoinReply
{
    /// The replica's build (assemblies' module version ids); equal builds compute equal bits.
    [Id(0)] public string Build { get; init; } = "";
    /// SHA-256 of the program (parameter names and shapes) and of the lifted problem's initial
    /// state (initial weights, fixed feedback matrices, …).
    [Id(1)] public string Program { get; init; } = "";
    /// SHA-256 of the training split (inputs and labels).
    [Id(2)] public string Data { get; init; } = "";
    /// Where the replica lives: the silo's address, its host name and process id.
    [Id(3)] public string Silo { get; init; } = "";
    [Id(4)] public string Host { get; init; } = "";
    [Id(5)] public int ProcessId { get; init; }
    /// Set when the replica cannot take part (its build differs, the settings fail there, …).
    [Id(6)] public string? Refusal { get; init; }
    [Id(7)] public int Threads { get; init; }
}

/// One evaluation of a replica's part of the operator: the examples of its shard, the step, the
/// problem's scalars at the start of the step (the checkpoint's, e.g. DistProp's variate step),
/// the current values of every shared variable (weights, and DistProp's or DSN's shared players)
/// in the safetensors layout, and which players' directions to return.
[GenerateSerializer]
public sealed class ShardRequest
{
    [Id(0)] public string RunId { get; init; } = "";
    [Id(1)] public long Step { get; init; }
    [Id(2)] public int Epoch { get; init; }
    [Id(3)] public int Epochs { get; init; }
    [Id(4)] public long[] Indices { get; init; } = Array.Empty<long>();
    [Id(5)] public Dictionary<string, double> Scalars { get; init; } = new();
    /// The inner solves of this step so far, this request's included when `RunInner`.
    [Id(6)] public int InnerSolves { get; init; }
    /// Run the inner solve (a bilevel method's inference on the shard) at `Shared` first.
    [Id(7)] public bool RunInner { get; init; }
    [Id(8)] public byte[] Shared { get; init; } = Array.Empty<byte>();
    [Id(9)] public string[] Players { get; init; } = Array.Empty<string>();
    /// A replay for a replica that lost the step's state (a re-activation): the shared values at
    /// each earlier inner solve of the step, in order.
    [Id(10)] public byte[][] InnerPoints { get; init; } = Array.Empty<byte[]>();
}

public enum ShardStatus
{
    Done = 0,
    /// The replica has not joined the run (a fresh activation, e.g. after its silo died).
    NotJoined = 1,
    /// The replica lacks the step's per-batch state (inner solves); ask again with `InnerPoints`.
    NeedsReplay = 2,
}

[GenerateSerializer]
public sealed class ShardReply
{
    [Id(0)] public ShardStatus Status { get; init; }
    /// The requested players' directions, each the shard's mean (safetensors layout).
    [Id(1)] public byte[] Directions { get; init; } = Array.Empty<byte>();
    /// The shard's mean loss and lifted objective at this evaluation.
    [Id(2)] public double Loss { get; init; }
    [Id(3)] public double Objective { get; init; }
    [Id(4)] public string Silo { get; init; } = "";
    [Id(5)] public double Seconds { get; init; }
}

/// A replica of a data-parallel run: one per shard, keyed "RUN/K/N", placed on the K-th of the
/// cluster's silos (mod their number) by `ReplicaPlacement`.
public interface IReplicaGrain : IGrainWithStringKey
{
    Task<JoinReply> Join(JoinRequest request);
    Task<ShardReply> Evaluate(ShardRequest request);
    /// The run is over: drop its state and deactivate.
    Task Leave();
}
