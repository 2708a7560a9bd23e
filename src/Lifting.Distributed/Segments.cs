using Orleans;
using Orleans.Runtime;

namespace Lifting.Distributed;

/// How the coordinator reaches the segments of a layer-parallel run: grains on a cluster
/// (`OrleansSegments`) or evaluators in this process (`InProcessSegments`).
public interface ISegmentSet : IDisposable
{
    int Count { get; }
    Task<JoinReply> JoinAsync(int segment, SegmentJoinRequest request);
    Task LoadAsync(int segment, string runId, SegmentState state);
    Task<SegmentStepReply> StepAsync(int segment, SegmentStepRequest request);
    Task<SegmentState> PullAsync(int segment, string runId, int chunk);
    Task LeaveAsync(int segment);
    /// Ends segment `segment`'s step in progress, if it still lives (best effort).
    Task AbortAsync(int segment, string runId);
    bool IsTransient(Exception e);
}

/// Segments in this process, each an evaluator on its own thread, passing gradient parts through
/// memory (still encoded as bytes, as on a network).
public sealed class InProcessSegments : ISegmentSet
{
    private readonly IShardJobFactory factory;
    private readonly string build;
    private readonly SegmentEvaluator?[] evaluators;

    public InProcessSegments(int count, IShardJobFactory factory, string build)
    {
        this.factory = factory;
        this.build = build;
        evaluators = new SegmentEvaluator?[count];
    }

    public int Count => evaluators.Length;

    public async Task<JoinReply> JoinAsync(int segment, SegmentJoinRequest request)
    {
        evaluators[segment]?.Dispose();
        evaluators[segment] = null;
        var place = $"in-process/{segment}";
        try
        {
            var evaluator = await SegmentEvaluator.CreateAsync(factory, request, (to, key, data) => evaluators[to]!.Deliver(key, data));
            evaluators[segment] = evaluator;
            return new JoinReply
            {
                Build = build, Program = evaluator.ProgramFingerprint, Data = evaluator.DataFingerprint, Silo = place,
                Host = Environment.MachineName, ProcessId = Environment.ProcessId, Threads = TorchSharp.torch.get_num_threads(),
            };
        }
        catch (Exception e) when (e is ArgumentException or InvalidOperationException or IOException)
        {
            return new JoinReply { Build = build, Silo = place, Host = Environment.MachineName, ProcessId = Environment.ProcessId, Refusal = e.Message.ReplaceLineEndings(" ") };
        }
    }

    private SegmentEvaluator Of(int segment) => evaluators[segment] ?? throw new InvalidOperationException($"segment {segment} has not joined");

    public Task LoadAsync(int segment, string runId, SegmentState state) => Of(segment).LoadAsync(state);
    public Task<SegmentStepReply> StepAsync(int segment, SegmentStepRequest request) => Of(segment).StepAsync(request, $"in-process/{segment}");
    public Task<SegmentState> PullAsync(int segment, string runId, int chunk) => Of(segment).PullAsync(chunk);

    public Task LeaveAsync(int segment)
    {
        evaluators[segment]?.Dispose();
        evaluators[segment] = null;
        return Task.CompletedTask;
    }

    public Task AbortAsync(int segment, string runId)
    {
        evaluators[segment]?.Abort();
        return Task.CompletedTask;
    }

    public bool IsTransient(Exception e) => false;

    public void Dispose()
    {
        for (int k = 0; k < evaluators.Length; k++) LeaveAsync(k);
    }
}

/// A segment of a layer-parallel run on a worker silo: builds the run from the coordinator's
/// settings, steps its blocks on request, and sends the gradient parts of its boundary cuts straight
/// to the neighbouring segments' grains (not through the coordinator).
[ReplicaPlacement]
public sealed class SegmentGrain : Grain, ISegmentGrain
{
    private readonly IShardJobFactory factory;
    private readonly ILocalSiloDetails silo;
    private readonly IGrainFactory grains;
    private SegmentEvaluator? evaluator;
    private string? runId;

    public SegmentGrain(IShardJobFactory factory, ILocalSiloDetails silo, IGrainFactory grains)
    {
        this.factory = factory;
        this.silo = silo;
        this.grains = grains;
    }

    private string Silo => silo.SiloAddress.Endpoint.ToString();

    public async Task<JoinReply> Join(SegmentJoinRequest request)
    {
        Drop();
        var build = Fingerprints.Build(factory.GetType().Assembly);
        var reply = new JoinReply
        {
            Build = build, Silo = Silo, Host = Environment.MachineName, ProcessId = Environment.ProcessId,
            Threads = TorchSharp.torch.get_num_threads(),
        };
        if (build != request.Build) return reply;
        try
        {
            int n = request.Firsts.Length;
            var run = request.RunId;
            void Send(int to, string key, byte[] data)
            {
                var call = grains.GetGrain<ISegmentGrain>($"{run}/{to}/{n}").Deliver(run, key, data);
                _ = call.ContinueWith(t => _ = t.Exception, TaskContinuationOptions.OnlyOnFaulted);
            }
            evaluator = await SegmentEvaluator.CreateAsync(factory, request, Send);
            runId = request.RunId;
            return new JoinReply
            {
                Build = build, Program = evaluator.ProgramFingerprint, Data = evaluator.DataFingerprint,
                Silo = Silo, Host = reply.Host, ProcessId = reply.ProcessId, Threads = reply.Threads,
            };
        }
        catch (Exception e)
        {
            return new JoinReply { Build = build, Silo = Silo, Host = reply.Host, ProcessId = reply.ProcessId, Refusal = e.Message.ReplaceLineEndings(" ").Trim() };
        }
    }

    private SegmentEvaluator Joined(string run) =>
        evaluator is { } e && runId == run ? e : throw new InvalidOperationException("this segment has not joined the run (its silo may have restarted)");

    public Task Load(string run, SegmentState state) => Joined(run).LoadAsync(state);

    public Task<SegmentStepReply> Step(SegmentStepRequest request) =>
        evaluator is { } e && runId == request.RunId
            ? e.StepAsync(request, Silo)
            : Task.FromResult(new SegmentStepReply { Status = ShardStatus.NotJoined, Silo = Silo });

    public Task Deliver(string run, string key, byte[] data)
    {
        if (evaluator is { } e && runId == run) e.Deliver(key, data);
        return Task.CompletedTask;
    }

    public Task<SegmentState> Pull(string run, int chunk) => Joined(run).PullAsync(chunk);

    public Task Abort(string run)
    {
        if (evaluator is { } e && runId == run) e.Abort();
        return Task.CompletedTask;
    }

    public Task Leave()
    {
        Drop();
        DeactivateOnIdle();
        return Task.CompletedTask;
    }

    public override Task OnDeactivateAsync(DeactivationReason reason, CancellationToken cancellationToken)
    {
        Drop();
        return Task.CompletedTask;
    }

    private void Drop()
    {
        evaluator?.Dispose();
        evaluator = null;
        runId = null;
    }
}

/// The segments of a run as grains of a cluster.
public sealed class OrleansSegments : ISegmentSet
{
    private readonly IClusterClient client;
    private readonly OrleansReplicas watch;
    private readonly System.Collections.Concurrent.ConcurrentDictionary<int, string> silos = new();

    public OrleansSegments(IClusterClient client, int count)
    {
        this.client = client;
        Count = count;
        watch = new OrleansReplicas(client, count);
    }

    public int Count { get; }
    /// The run's key prefix: set by the coordinator's run id at the first join.
    private string run = "";

    private ISegmentGrain Grain(int k) => client.GetGrain<ISegmentGrain>($"{run}/{k}/{Count}");

    public async Task<JoinReply> JoinAsync(int segment, SegmentJoinRequest request)
    {
        run = request.RunId;
        var reply = await watch.Watched(Grain(segment).Join(request), null);
        if (!string.IsNullOrEmpty(reply.Silo)) silos[segment] = reply.Silo;
        return reply;
    }

    private string? SiloOf(int k) => silos.TryGetValue(k, out var s) ? s : null;

    public Task LoadAsync(int segment, string runId, SegmentState state) => watch.Watched(Grain(segment).Load(runId, state).ContinueWith(t => { t.GetAwaiter().GetResult(); return 0; }), SiloOf(segment));
    public Task<SegmentStepReply> StepAsync(int segment, SegmentStepRequest request) => watch.Watched(Grain(segment).Step(request), SiloOf(segment));
    public Task<SegmentState> PullAsync(int segment, string runId, int chunk) => watch.Watched(Grain(segment).Pull(runId, chunk), SiloOf(segment));

    public Task LeaveAsync(int segment)
    {
        var call = Grain(segment).Leave();
        _ = call.ContinueWith(t => _ = t.Exception, TaskContinuationOptions.OnlyOnFaulted);
        return call.WaitAsync(OrleansReplicas.UnreachableLimit);
    }

    public Task AbortAsync(int segment, string runId)
    {
        var call = Grain(segment).Abort(runId);
        _ = call.ContinueWith(t => _ = t.Exception, TaskContinuationOptions.OnlyOnFaulted);
        return call.WaitAsync(OrleansReplicas.UnreachableLimit);
    }

    public bool IsTransient(Exception e) => watch.IsTransient(e);

    public void Dispose() { }
}
