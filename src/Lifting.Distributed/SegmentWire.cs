using Orleans;
using Orleans.Concurrency;

namespace Lifting.Distributed;

/// What the coordinator asks segment k of a layer-parallel run to join with: the run's settings
/// (config.json, from which the segment builds the same program, data and lifted problem), the
/// split (every segment's first block and end), and the coordinator's build.
[GenerateSerializer]
public sealed class SegmentJoinRequest
{
    [Id(0)] public string RunId { get; init; } = "";
    [Id(1)] public int Segment { get; init; }
    [Id(2)] public int[] Firsts { get; init; } = Array.Empty<int>();
    [Id(3)] public int[] Ends { get; init; } = Array.Empty<int>();
    [Id(4)] public string Config { get; init; } = "";
    [Id(5)] public string Build { get; init; } = "";
    /// How long a segment waits for a neighbour's gradient part before giving up the step.
    [Id(6)] public double ExchangeTimeoutSeconds { get; init; } = 120;
}

/// One solver step of the run on every segment: the mini-batch (its example indices; every
/// segment reads the labels from its own copy of the data, only the first reads images), the
/// epoch for the schedules, the players that move, and which of the batch's iterations this is.
[GenerateSerializer]
public sealed class SegmentStepRequest
{
    [Id(0)] public string RunId { get; init; } = "";
    [Id(1)] public long Step { get; init; }
    [Id(2)] public int Epoch { get; init; }
    [Id(3)] public int Epochs { get; init; }
    [Id(4)] public long[] Indices { get; init; } = Array.Empty<long>();
    [Id(5)] public string[] Players { get; init; } = Array.Empty<string>();
    [Id(6)] public int Iteration { get; init; }
    [Id(7)] public int Iterations { get; init; } = 1;
}

[GenerateSerializer]
public sealed class SegmentStepReply
{
    [Id(0)] public ShardStatus Status { get; init; }
    /// The segment's part of the batch's mean loss (nonzero only where the output block is) and
    /// of the lifted objective, at the step's last evaluation.
    [Id(1)] public double Loss { get; init; }
    [Id(2)] public double Objective { get; init; }
    /// Per cut, the mean |defect| of the cuts the segment's blocks end in (0 for the others).
    [Id(3)] public double[] Defects { get; init; } = Array.Empty<double>();
    [Id(4)] public double[] MultiplierNorms { get; init; } = Array.Empty<double>();
    /// Bytes of gradient parts this segment sent its neighbours during the step.
    [Id(5)] public long BytesSent { get; init; }
    [Id(6)] public double Seconds { get; init; }
    [Id(7)] public string Silo { get; init; } = "";
    /// Of `Seconds`, the time spent waiting for the neighbours' gradient parts.
    [Id(8)] public double WaitSeconds { get; init; }
}

/// A segment's part of the run's state (the `StateTensors` it owns, safetensors layout) and the
/// problem's scalars.
[GenerateSerializer]
public sealed class SegmentState
{
    /// One chunk of the tensors (`StateChunks`).
    [Id(0)] public byte[] Tensors { get; init; } = Array.Empty<byte>();
    [Id(1)] public Dictionary<string, double> Scalars { get; init; } = new();
    /// How many chunks the state has (a pull's answer).
    [Id(2)] public int Chunks { get; init; } = 1;
}

/// Segment k of a layer-parallel run, keyed "RUN/K/N" and placed on the K-th silo (mod their
/// number) by `ReplicaPlacement`. `Deliver` interleaves with a running `Step`: a neighbour's
/// gradient part arrives while the step waits for it.
public interface ISegmentGrain : IGrainWithStringKey
{
    Task<JoinReply> Join(SegmentJoinRequest request);
    /// Overwrites part of the segment's state with the coordinator's (a resume), one chunk a call.
    Task Load(string runId, SegmentState state);
    Task<SegmentStepReply> Step(SegmentStepRequest request);
    [AlwaysInterleave]
    Task Deliver(string runId, string key, byte[] data);
    /// Chunk `chunk` of the state the segment owns (chunk 0 takes the snapshot the others come from).
    Task<SegmentState> Pull(string runId, int chunk);
    /// Ends the step in progress (a neighbour was lost): interleaves with it.
    [AlwaysInterleave]
    Task Abort(string runId);
    Task Leave();
}
