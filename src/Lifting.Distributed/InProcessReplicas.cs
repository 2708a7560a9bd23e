namespace Lifting.Distributed;

/// Replicas in this process, each an evaluator on its own thread: the data-parallel arithmetic
/// without a network (the reference a cluster run must equal bit for bit).
public sealed class InProcessReplicas : IReplicaSet
{
    private readonly IShardJobFactory factory;
    private readonly string build;
    private readonly ShardEvaluator?[] evaluators;
    private readonly string?[] runs;

    public InProcessReplicas(int count, IShardJobFactory factory, string build)
    {
        this.factory = factory;
        this.build = build;
        evaluators = new ShardEvaluator?[count];
        runs = new string?[count];
    }

    public int Count => evaluators.Length;

    public async Task<JoinReply> JoinAsync(int replica, JoinRequest request)
    {
        evaluators[replica]?.Dispose();
        evaluators[replica] = null;
        var place = $"in-process/{replica}";
        try
        {
            var evaluator = await ShardEvaluator.CreateAsync(factory, request.Config);
            evaluators[replica] = evaluator;
            runs[replica] = request.RunId;
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

    public Task<ShardReply> EvaluateAsync(int replica, ShardRequest request) =>
        evaluators[replica] is { } e && runs[replica] == request.RunId
            ? e.EvaluateAsync(request, $"in-process/{replica}")
            : Task.FromResult(new ShardReply { Status = ShardStatus.NotJoined });

    public Task LeaveAsync(int replica)
    {
        evaluators[replica]?.Dispose();
        evaluators[replica] = null;
        return Task.CompletedTask;
    }

    public bool IsTransient(Exception e) => false;

    public void Dispose()
    {
        for (int k = 0; k < evaluators.Length; k++) LeaveAsync(k);
    }
}
