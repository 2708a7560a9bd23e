using System.Diagnostics;
using System.Globalization;
using Lifting.Data;
using Lifting.Formulations;
using Lifting.Programs;
using Lifting.Solvers;
using Lifting.Training;
using static TorchSharp.torch;
using static Lifting.Distributed.Blocking;

namespace Lifting.Distributed;

/// How the coordinator reaches its replicas: grains on a cluster (`OrleansReplicas`) or
/// evaluators in this process (`InProcessReplicas`, the same arithmetic without a network).
public interface IReplicaSet : IDisposable
{
    int Count { get; }
    Task<JoinReply> JoinAsync(int replica, JoinRequest request);
    Task<ShardReply> EvaluateAsync(int replica, ShardRequest request);
    Task LeaveAsync(int replica);
    /// True for a failure of the transport (a silo lost, a timeout), which a retry may cure;
    /// false for an error of the computation itself.
    bool IsTransient(Exception e);
}

/// A run cannot go on on its cluster (a worker of another build or program, no worker for too
/// long): one line; the host reports it and exits non-zero.
public sealed class DistributedException : InvalidOperationException
{
    public DistributedException(string message) : base(message) { }
}

/// Where replica K lives.
public sealed record ReplicaPlace(int Replica, string Silo, string Host, int ProcessId, int Threads);

/// Something that happened to the cluster during the run (a replica lost, re-joined elsewhere).
public sealed record ClusterEvent(DateTimeOffset Time, int? Epoch, long? Step, string Text);

public sealed class DataParallelOptions
{
    /// How long a replica may stay unreachable before the run stops (a worker gone for good).
    public TimeSpan WorkerTimeout { get; init; } = TimeSpan.FromSeconds(120);
    /// The build identity the replicas must share (`Fingerprints.Build`).
    public string Build { get; init; } = Fingerprints.Build();
    /// Receives one line per cluster event (for the progress display).
    public Action<string>? Log { get; init; }
}

/// Synchronous data-parallel training: the coordinator (this process) holds the weights, every
/// other shared variable and their step rules; each step it sends their values to the replicas,
/// each replica returns its shard's mean direction, and the coordinator combines them as
/// Σ_k (b_k / B) d_k in replica order (shard k = the k-th contiguous slice of the batch) and steps
/// with the method's solver. With one replica the combination is exact (b/B = 1) and the run
/// equals the one-process run bit for bit; with K the per-example gradients are summed in K
/// groups, so the weights differ at float rounding level.
///
/// `Formulation` and `Solver` replace the method's in `Trainer.Train`; checkpoints, metrics and
/// evaluation stay the trainer's, on the coordinator.
public sealed class DataParallelRun : IDisposable
{
    private readonly IReplicaSet replicas;
    private readonly string config;
    private readonly ResolvedMethod method;
    private readonly TrainingOptions options;
    private readonly DataParallelOptions settings;
    private readonly string runId = Guid.NewGuid().ToString("N")[..12];
    private readonly object gate = new();
    private readonly ClusterRecord record;
    private string programFingerprint = "", dataFingerprint = "";
    private DistributedGame? current;

    public DataParallelRun(IReplicaSet replicas, string config, ResolvedMethod method, TrainingOptions options, DataParallelOptions? settings = null)
    {
        if (replicas.Count < 1) throw new ArgumentException("--workers: at least one replica is needed.");
        this.replicas = replicas;
        this.config = config;
        this.method = method;
        this.options = options;
        this.settings = settings ?? new DataParallelOptions();
        record = new ClusterRecord(replicas.Count, this.settings.Log);
        Formulation = new DistributedFormulation(this, method.Formulation);
        Solver = new DistributedSolver(this);
    }

    public IFormulation Formulation { get; }
    public ISolver Solver { get; }
    public DataParallelPlan? Plan { get; private set; }
    public int Replicas => replicas.Count;

    public IReadOnlyList<ReplicaPlace?> Layout => record.Layout;
    public IReadOnlyList<ClusterEvent> Events => record.Events;
    /// Raised (on any thread) when the layout or the events change.
    public event Action? Changed { add => record.Changed += value; remove => record.Changed -= value; }

    /// Operator evaluations, the steps they served, and the bytes sent to and received from the
    /// replicas (message payloads: indices, values, directions; without Orleans' framing).
    public long Evaluations { get; private set; }
    public long Steps { get; private set; }
    public long BytesSent { get; private set; }
    public long BytesReceived { get; private set; }

    private void Event(long? step, string text) => record.Event(step, text);

    private ILiftedProblem Lift(IFormulation inner, LiftContext context, Weights weights)
    {
        var problem = inner.Lift(context, weights);
        try
        {
            record.BatchesPerEpoch = (context.Train.Count + options.BatchSize - 1) / options.BatchSize;
            programFingerprint = Fingerprints.Problem(context.Program, problem);
            dataFingerprint = Fingerprints.Data(context.Train);
            Plan = DataParallelPlan.Of(method, problem, context.Train);
            var joins = Enumerable.Range(0, replicas.Count).Select(k => JoinAsync(k, null)).ToArray();
            Wait(Task.WhenAll(joins));
            return new DistributedProblem(this, problem);
        }
        catch
        {
            problem.Dispose();
            throw;
        }
    }

    /// Joins replica k (at the start, or again after it lost the run), retrying transport
    /// failures until the worker timeout; refuses a replica of another build, program or data.
    private async Task JoinAsync(int k, long? step)
    {
        var request = new JoinRequest { RunId = runId, Replica = k, Replicas = replicas.Count, Config = config, Build = settings.Build };
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            JoinReply reply;
            try { reply = await replicas.JoinAsync(k, request); }
            catch (Exception e) when (replicas.IsTransient(e))
            {
                if (deadline.Elapsed > settings.WorkerTimeout)
                    throw new DistributedException($"replica {k}: no worker took it within {settings.WorkerTimeout.TotalSeconds:F0} s ({e.GetType().Name}: {OneLine(e.Message)})");
                await Task.Delay(500);
                continue;
            }
            Fingerprints.Verify($"replica {k}", reply, settings.Build, programFingerprint, dataFingerprint);
            var before = record.Place(new ReplicaPlace(k, reply.Silo, reply.Host, reply.ProcessId, reply.Threads));
            if (before is not null) Event(step, $"replica {k} re-joined on silo {reply.Silo} (host {reply.Host}, pid {reply.ProcessId}); it was on {before.Silo}");
            return;
        }
    }

    /// Replica k's answer to `request`, retrying transport failures (the silo lost: the grain is
    /// activated again on another silo, joins again and recomputes) until the worker timeout.
    private async Task<ShardReply> EvaluateAsync(int k, ShardRequest request, IReadOnlyList<byte[]> innerPoints)
    {
        var lost = (Stopwatch?)null;
        while (true)
        {
            ShardReply reply;
            try { reply = await replicas.EvaluateAsync(k, request); }
            catch (Exception e) when (replicas.IsTransient(e))
            {
                if (lost is null)
                {
                    lost = Stopwatch.StartNew();
                    Event(request.Step, $"replica {k} on silo {record[k]?.Silo ?? "?"} did not answer at step {request.Step} ({e.GetType().Name}: {OneLine(e.Message)}); retrying");
                }
                if (lost.Elapsed > settings.WorkerTimeout)
                    throw new DistributedException($"replica {k}: its worker left and no other took its place within {settings.WorkerTimeout.TotalSeconds:F0} s (at step {request.Step}; last: {e.GetType().Name}: {OneLine(e.Message)}); " +
                                                   "the checkpoint holds the last completed epoch");
                await Task.Delay(500);
                continue;
            }
            switch (reply.Status)
            {
                case ShardStatus.Done:
                    if (lost is not null) Event(request.Step, string.Create(CultureInfo.InvariantCulture, $"replica {k} answered again from silo {reply.Silo} after {lost.Elapsed.TotalSeconds:F1} s; step {request.Step} was recomputed there"));
                    return reply;
                case ShardStatus.NotJoined:
                    await JoinAsync(k, request.Step);
                    continue;
                case ShardStatus.NeedsReplay:
                    var earlier = request.RunInner ? innerPoints.Take(innerPoints.Count - 1) : innerPoints;
                    request = Copy(request, earlier.ToArray());
                    continue;
                default:
                    throw new DistributedException($"replica {k} answered with status {reply.Status}");
            }
        }
    }

    private static ShardRequest Copy(ShardRequest r, byte[][] points) => new()
    {
        RunId = r.RunId, Step = r.Step, Epoch = r.Epoch, Epochs = r.Epochs, Indices = r.Indices, Scalars = r.Scalars,
        InnerSolves = r.InnerSolves, RunInner = r.RunInner, Shared = r.Shared, Players = r.Players, InnerPoints = points,
    };

    /// Tells every replica the run is over (best effort).
    public void Leave()
    {
        try { Wait(Task.WhenAll(Enumerable.Range(0, replicas.Count).Select(k => replicas.LeaveAsync(k)))); }
        catch (Exception) { /* a replica already gone has nothing to drop */ }
    }

    public void Dispose() => replicas.Dispose();

    private sealed class DistributedFormulation : IFormulation
    {
        private readonly DataParallelRun run;
        private readonly IFormulation inner;

        public DistributedFormulation(DataParallelRun run, IFormulation inner)
        {
            this.run = run;
            this.inner = inner;
        }

        public string Name => inner.Name;
        public string Description => inner.Description;
        public IReadOnlyList<string> PlayerNames => inner.PlayerNames;
        public bool HasMaximisingPlayers => inner.HasMaximisingPlayers;
        public IReadOnlyList<SubProblem> DefaultSchedule => inner.DefaultSchedule;
        public ILiftedProblem Lift(LiftContext context, Weights weights) => run.Lift(inner, context, weights);
    }

    /// The coordinator's problem: the method's own (weights, shared variables, step states,
    /// checkpoints, measurements), whose batch games are evaluated by the replicas.
    private sealed class DistributedProblem : ILiftedProblem, ICheckpointable
    {
        private readonly DataParallelRun run;
        private readonly ILiftedProblem inner;

        public DistributedProblem(DataParallelRun run, ILiftedProblem inner)
        {
            this.run = run;
            this.inner = inner;
        }

        public IFormulation Formulation => run.Formulation;
        public Weights Weights => inner.Weights;
        public ExampleStore Store => inner.Store;
        public long StateBytes => inner.StateBytes;
        public void EndEpoch(int epoch) => inner.EndEpoch(epoch);
        public void Finish() => inner.Finish();
        public IReadOnlyList<double> MeasureDefects(Tensor? rows = null) => inner.MeasureDefects(rows);
        public IReadOnlyDictionary<string, double> Diagnostics => inner.Diagnostics;
        public IReadOnlyDictionary<string, Tensor> StateTensors => ((ICheckpointable)inner).StateTensors;
        public IReadOnlyDictionary<string, double> StateScalars => ((ICheckpointable)inner).StateScalars;
        public void RestoreScalars(IReadOnlyDictionary<string, double> scalars) => ((ICheckpointable)inner).RestoreScalars(scalars);

        public IBatchGame Batch(MiniBatch batch)
        {
            // The scalars the step starts from (the game may advance them, e.g. DistProp's variate
            // step); every replica starts its game from them.
            var scalars = inner is ICheckpointable c ? c.StateScalars.ToDictionary(p => p.Key, p => p.Value) : new Dictionary<string, double>();
            // A one-example game gives the shared players (the problem's own tensors and step
            // states) without computing anything on the whole batch here.
            var one = new MiniBatch(batch.Indices.narrow(0, 0, 1), batch.Inputs.narrow(0, 0, 1), batch.Labels.narrow(0, 0, 1)) { Step = batch.Step };
            var local = inner.Batch(one);
            var game = new DistributedGame(run, local, one, batch, scalars);
            run.current = game;
            return game;
        }

        public void Dispose() => inner.Dispose();
    }

    private sealed class DistributedGame : IBatchGame
    {
        private readonly DataParallelRun run;
        private readonly IBatchGame local;
        private readonly MiniBatch one;
        private readonly long[] indices;
        private readonly Dictionary<string, double> scalars;
        private readonly List<byte[]> innerPoints = new();
        private bool innerPending;
        private double loss = double.NaN, objective = double.NaN;

        public DistributedGame(DataParallelRun run, IBatchGame local, MiniBatch one, MiniBatch batch, Dictionary<string, double> scalars)
        {
            this.run = run;
            this.local = local;
            this.one = one;
            this.scalars = scalars;
            using var cpu = batch.Indices.cpu();
            indices = cpu.data<long>().ToArray();
            Batch = batch;
            Players = local.Players.Where(p => !p.RowIndexed).ToArray();
        }

        public MiniBatch Batch { get; }
        public IReadOnlyList<Player> Players { get; }

        /// The next operator evaluation runs the inner solve first (a bilevel method's step).
        public void BeginInner() => innerPending = true;

        public IReadOnlyList<IReadOnlyList<Tensor>> Operator(IReadOnlyList<Player> players)
        {
            var values = new List<(string, Tensor)>();
            foreach (var p in Players)
                for (int j = 0; j < p.Variables.Count; j++) values.Add(($"{p.Name}/{j}", p.Variables[j]));
            var shared = TensorBytes.Encode(values);
            bool runInner = innerPending;
            innerPending = false;
            if (runInner) innerPoints.Add(shared);
            var points = innerPoints.ToArray();
            int n = indices.Length, k = run.replicas.Count;
            var names = players.Select(p => p.Name).ToArray();
            var requests = new List<(int Replica, ShardRequest Request, int Count)>();
            for (int r = 0; r < k; r++)
            {
                int start = (int)((long)r * n / k), end = (int)((long)(r + 1) * n / k);
                if (end == start) continue;
                requests.Add((r, new ShardRequest
                {
                    RunId = run.runId, Step = Batch.Step, Epoch = (int)(Batch.Step / run.record.BatchesPerEpoch) + 1, Epochs = run.options.Epochs,
                    Indices = indices[start..end], Scalars = scalars, InnerSolves = innerPoints.Count, RunInner = runInner,
                    Shared = shared, Players = names,
                }, end - start));
            }
            var replies = Wait(Task.WhenAll(requests.Select(q => run.EvaluateAsync(q.Replica, q.Request, points))));
            lock (run.gate)
            {
                run.Evaluations++;
                run.BytesSent += requests.Sum(q => q.Request.Shared.Length + q.Request.Indices.Length * 8L);
                run.BytesReceived += replies.Sum(q => (long)q.Directions.Length);
            }
            if (firstEvaluation)
            {
                firstEvaluation = false;
                lock (run.gate) run.Steps++;
            }
            // Σ_k (b_k / B) d_k in replica order.
            var result = players.Select(p => new Tensor[p.Variables.Count]).ToArray();
            loss = objective = 0;
            using var _ = no_grad();
            for (int q = 0; q < replies.Length; q++)
            {
                double weight = (double)requests[q].Count / n;
                var scale = Scalars.Of(weight);
                using var file = TensorBytes.Decode(replies[q].Directions);
                for (int i = 0; i < players.Count; i++)
                    for (int j = 0; j < players[i].Variables.Count; j++)
                    {
                        var d = file[$"{players[i].Name}/{j}"];
                        var target = players[i].Variables[j];
                        if (result[i][j] is null) result[i][j] = d.to(target.device).mul(scale);
                        else result[i][j].add_(d.to(target.device), alpha: scale);
                    }
                loss += weight * replies[q].Loss;
                objective += weight * replies[q].Objective;
            }
            return result;
        }

        private bool firstEvaluation = true;

        public double Objective() => objective;
        public IReadOnlyList<double> Defects => Array.Empty<double>();
        public IReadOnlyList<double> MultiplierNorms => Array.Empty<double>();
        public double Loss => loss;
        public double LiftedObjective => objective;
        /// Nothing per example to write back (the plan refuses methods that keep rows).
        public void Commit() { }

        public void Dispose()
        {
            local.Dispose();
            one.Dispose();
            if (run.current == this) run.current = null;
        }
    }

    /// The coordinator's solver: the method's, or for a bilevel method its outer solver after the
    /// replicas' inner solves.
    private sealed class DistributedSolver : ISolver
    {
        private readonly DataParallelRun run;
        public DistributedSolver(DataParallelRun run) => this.run = run;
        public string Name => run.method.Solver.Name;
        public int MemorySlots => run.method.Solver.MemorySlots;

        public void Step(IGame game)
        {
            var plan = run.Plan ?? throw new InvalidOperationException("The data-parallel problem has not been lifted.");
            if (plan.Inner is not null) (run.current ?? throw new InvalidOperationException("No data-parallel game is open.")).BeginInner();
            plan.CoordinatorSolver.Step(game);
        }
    }
}
