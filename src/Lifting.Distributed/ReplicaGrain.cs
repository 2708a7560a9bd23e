using Orleans;
using Orleans.Placement;
using Orleans.Runtime;
using Orleans.Runtime.Placement;

namespace Lifting.Distributed;

/// Places replica K of a run ("RUN/K/N") on the K-th of the compatible silos in address order,
/// modulo their number: two replicas on two silos land on different silos, and a replica whose
/// silo died is activated again on one of the survivors.
[GenerateSerializer]
public sealed class ReplicaPlacementStrategy : PlacementStrategy
{
    public static ReplicaPlacementStrategy Instance { get; } = new();
}

[AttributeUsage(AttributeTargets.Class)]
public sealed class ReplicaPlacementAttribute : PlacementAttribute
{
    public ReplicaPlacementAttribute() : base(ReplicaPlacementStrategy.Instance) { }
}

public sealed class ReplicaPlacementDirector : IPlacementDirector
{
    public Task<SiloAddress> OnAddActivation(PlacementStrategy strategy, PlacementTarget target, IPlacementContext context)
    {
        var silos = context.GetCompatibleSilos(target).OrderBy(s => s).ToArray();
        var key = target.GrainIdentity.Key.ToString() ?? "";
        var parts = key.Split('/');
        int k = parts.Length >= 2 && int.TryParse(parts[1], out var n) && n >= 0 ? n : 0;
        return Task.FromResult(silos[k % silos.Length]);
    }
}

/// A replica of a data-parallel run on a worker silo: builds the run from the coordinator's
/// settings with the host's job factory and evaluates its shard's operator on request. It keeps
/// nothing between steps that the coordinator cannot send again: a replica whose silo died is
/// activated on another silo, answers `NotJoined`, is joined again and recomputes the step.
[ReplicaPlacement]
public sealed class ReplicaGrain : Grain, IReplicaGrain
{
    private readonly IShardJobFactory factory;
    private readonly ILocalSiloDetails silo;
    private ShardEvaluator? evaluator;
    private string? runId;

    public ReplicaGrain(IShardJobFactory factory, ILocalSiloDetails silo)
    {
        this.factory = factory;
        this.silo = silo;
    }

    private string Silo => silo.SiloAddress.Endpoint.ToString();

    public async Task<JoinReply> Join(JoinRequest request)
    {
        Drop();
        var build = Fingerprints.Build(factory.GetType().Assembly);
        var reply = new JoinReply
        {
            Build = build, Silo = Silo, Host = Environment.MachineName, ProcessId = Environment.ProcessId,
            Threads = TorchSharp.torch.get_num_threads(),
        };
        if (build != request.Build) return reply; // the coordinator names both builds
        try
        {
            evaluator = await ShardEvaluator.CreateAsync(factory, request.Config);
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

    public Task<ShardReply> Evaluate(ShardRequest request) =>
        evaluator is { } e && runId == request.RunId
            ? e.EvaluateAsync(request, Silo)
            : Task.FromResult(new ShardReply { Status = ShardStatus.NotJoined, Silo = Silo });

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
