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

/// Synchronous layer-parallel training: the lifted program's blocks are split into contiguous
/// ranges (`LayerPlan`), one segment process per range. Every step the coordinator (this process)
/// sends each segment the mini-batch's example indices; each segment evaluates only its blocks'
/// terms, talks to its neighbours across its boundary cuts and steps its own players with the
/// method's solver. DistProp's segments exchange the gradient parts of the cut's class means and
/// scales (M·H numbers per cut, independent of the batch size); the images go to no segment but the
/// first (each reads its own copy of the data; the others use only the labels). Online AM's
/// segments pass the cut's forward codes up and, once the codes above have moved, the cut's
/// updated codes down (seed 004's top-down order); each then solves its blocks' weight
/// sub-problems while the segments below still update their codes. The multiple-shooting
/// Lagrangian's and the quadratic penalty's segments exchange the gradient parts of the batch's
/// rows of the cut's state.
///
/// The weights equal the one-process run's bit for bit (tests/Lifting.Tests/DistributedTests.fs):
/// each variable's gradient is the same sum of the same terms (a DistProp boundary variable's the
/// sum of the two segments' parts, a + b = b + a; an AM code's the same terms at the same codes),
/// and its step the same step. The coordinator keeps the whole problem for evaluation, checkpoints and resume: it
/// pulls the segments' owned state when the trainer reads it (the last batch of an epoch, the
/// epoch's end, a checkpoint) and pushes its state to them before the first step (a resume).
///
/// `Formulation` and `Solver` replace the method's in `Trainer.Train`.
public sealed class LayerParallelRun : IDisposable
{
    private readonly ISegmentSet segments;
    private readonly string config;
    private readonly ResolvedMethod method;
    private readonly TrainingOptions options;
    private readonly DataParallelOptions settings;
    private readonly string runId = Guid.NewGuid().ToString("N")[..12];
    private readonly object gate = new();
    private readonly ClusterRecord record;
    private string programFingerprint = "", dataFingerprint = "";
    private SegmentedGame? current;
    private SegmentedProblem? problem;
    /// The steps since the coordinator's state was last equal to the segments' (a pull or a push):
    /// what a recovery replays.
    private readonly List<SegmentStepRequest[]> log = new();

    public LayerParallelRun(ISegmentSet segments, string config, ResolvedMethod method, TrainingOptions options, DataParallelOptions? settings = null)
    {
        if (segments.Count < 1) throw new ArgumentException("--segments: at least one segment is needed.");
        if (options.CosineToBackprop) throw new ArgumentException("layer-parallel training: --cosine needs the weights on the coordinator at every step; not available with --segments");
        this.segments = segments;
        this.config = config;
        this.method = method;
        this.options = options;
        this.settings = settings ?? new DataParallelOptions();
        record = new ClusterRecord(segments.Count, this.settings.Log);
        Formulation = new SegmentedFormulation(this, method.Formulation);
        Solver = new SegmentedSolver(this);
    }

    public IFormulation Formulation { get; }
    public ISolver Solver { get; }
    public LayerPlan? Plan { get; private set; }
    public int Segments => segments.Count;

    public IReadOnlyList<ReplicaPlace?> Layout => record.Layout;
    public IReadOnlyList<ClusterEvent> Events => record.Events;
    /// Raised (on any thread) when the layout or the events change.
    public event Action? Changed { add => record.Changed += value; remove => record.Changed -= value; }

    /// Solver steps; bytes from the coordinator to the segments (batch indices), between segments
    /// (gradient parts of the boundary cuts) and of whole-state pushes and pulls (the start, the
    /// epochs' ends, checkpoints); each segment's compute seconds.
    public long Steps { get; private set; }
    public long BytesToSegments { get; private set; }
    public long BytesBetweenSegments { get; private set; }
    public long BytesOfState { get; private set; }
    public double[] SegmentSeconds { get; private set; } = Array.Empty<double>();
    /// Of `SegmentSeconds`, the time each segment waited for its neighbours' gradient parts.
    public double[] SegmentWaitSeconds { get; private set; } = Array.Empty<double>();
    public long[] SegmentBytes { get; private set; } = Array.Empty<long>();

    private void Event(long? step, string text) => record.Event(step, text);

    private ILiftedProblem Lift(IFormulation inner, LiftContext context, Weights weights)
    {
        var lifted = inner.Lift(context, weights);
        try
        {
            record.BatchesPerEpoch = (context.Train.Count + options.BatchSize - 1) / options.BatchSize;
            Plan = LayerPlan.Of(method, lifted, segments.Count, options.BatchSize);
            if (lifted is not ICheckpointable)
                throw new ArgumentException($"layer-parallel training: the problem of {method.Name} cannot be checkpointed, so its state cannot move between processes");
            programFingerprint = Fingerprints.Problem(context.Program, lifted);
            dataFingerprint = Fingerprints.Data(context.Train);
            SegmentSeconds = new double[segments.Count];
            SegmentWaitSeconds = new double[segments.Count];
            SegmentBytes = new long[segments.Count];
            Wait(Task.WhenAll(Enumerable.Range(0, segments.Count).Select(JoinAsync)));
            problem = new SegmentedProblem(this, lifted);
            return problem;
        }
        catch
        {
            lifted.Dispose();
            throw;
        }
    }

    private async Task JoinAsync(int k)
    {
        var plan = Plan!;
        var request = new SegmentJoinRequest
        {
            RunId = runId, Segment = k, Config = config, Build = settings.Build,
            Firsts = plan.Ranges.Select(r => r.First).ToArray(), Ends = plan.Ranges.Select(r => r.End).ToArray(),
            ExchangeTimeoutSeconds = settings.WorkerTimeout.TotalSeconds,
        };
        var deadline = Stopwatch.StartNew();
        while (true)
        {
            JoinReply reply;
            try { reply = await segments.JoinAsync(k, request); }
            catch (Exception e) when (segments.IsTransient(e))
            {
                if (deadline.Elapsed > settings.WorkerTimeout)
                    throw new DistributedException($"segment {k}: no worker took it within {settings.WorkerTimeout.TotalSeconds:F0} s ({e.GetType().Name}: {OneLine(e.Message)})");
                await Task.Delay(500);
                continue;
            }
            Fingerprints.Verify($"segment {k}", reply, settings.Build, programFingerprint, dataFingerprint);
            record.Place(new ReplicaPlace(k, reply.Silo, reply.Host, reply.ProcessId, reply.Threads));
            return;
        }
    }

    /// Every task's result; as soon as one fails, its error (a segment's own failure leaves its
    /// neighbours waiting for its gradient part: their time-outs are not the cause).
    private static T[] FailFast<T>(Task<T>[] tasks)
    {
        var pending = tasks.ToList();
        while (pending.Count > 0)
        {
            var done = Task.WhenAny(pending).GetAwaiter().GetResult();
            pending.Remove(done);
            if (done.IsFaulted)
            {
                Thread.Sleep(50); // a neighbour's time-out may be the consequence of a failure reported a moment later
                var failed = tasks.Where(t => t.IsFaulted).Select(t => t.Exception!.InnerException ?? t.Exception!).ToArray();
                throw failed.FirstOrDefault(e => e is not TimeoutException) ?? failed[0];
            }
        }
        return tasks.Select(t => t.Result).ToArray();
    }

    /// A segment that failed while state moved (a push or a pull), in one line: the last
    /// checkpoint is where `lifting resume` starts. A segment lost during a step is recovered (`Recover`).
    private async Task<T> Call<T>(int k, long? step, Func<Task<T>> call)
    {
        try { return await call(); }
        catch (Exception e) when (segments.IsTransient(e))
        {
            var where = record[k] is { } p ? $" on silo {p.Silo} (host {p.Host}, pid {p.ProcessId})" : "";
            Event(step, $"segment {k}{where} was lost ({e.GetType().Name}: {OneLine(e.Message)})");
            throw new DistributedException($"segment {k}{where} was lost while the run's state moved between the coordinator and the segments; the checkpoint holds the last completed epoch (lifting resume)");
        }
    }

    private Task Call(int k, long? step, Func<Task> call) => Call(k, step, async () => { await call(); return 0; });

    /// Sends the coordinator's state to every segment (each gets what its blocks read,
    /// `ILayerSplittable.Reads`), in chunks.
    private void Push()
    {
        var all = ((ICheckpointable)problem!.Inner).StateTensors;
        var scalars = ((ICheckpointable)problem.Inner).StateScalars.ToDictionary(p => p.Key, p => p.Value);
        var split = (ILayerSplittable)problem.Inner;
        Wait(Task.WhenAll(Enumerable.Range(0, segments.Count).Select(k => Call(k, null, async () =>
        {
            var range = Plan!.Ranges[k];
            var chunks = StateChunks.Encode(all.Where(p => split.Reads(range, p.Key)).Select(p => (p.Key, p.Value)));
            foreach (var chunk in chunks)
            {
                lock (gate) BytesOfState += chunk.Length;
                await segments.LoadAsync(k, runId, new SegmentState { Tensors = chunk, Scalars = scalars });
            }
        }))));
    }

    /// Copies every segment's owned state into the coordinator's problem, chunk by chunk.
    private void Pull()
    {
        var target = (ICheckpointable)problem!.Inner;
        var all = target.StateTensors;
        var scalars = Wait(Task.WhenAll(Enumerable.Range(0, segments.Count).Select(k => Call(k, null, async () =>
        {
            var first = await segments.PullAsync(k, runId, 0);
            var chunks = new List<byte[]> { first.Tensors };
            for (int c = 1; c < first.Chunks; c++) chunks.Add((await segments.PullAsync(k, runId, c)).Tensors);
            return (first.Scalars, chunks);
        }))));
        foreach (var (_, chunks) in scalars)
            foreach (var chunk in chunks)
            {
                BytesOfState += chunk.Length;
                StateChunks.Apply(chunk, all);
            }
        // A scalar a segment owns (a block's counter) from that segment; the others are the same
        // in every segment (DistProp's variate step, AM's μ): the first's.
        var merged = scalars[0].Scalars.ToDictionary(q => q.Key, q => q.Value);
        var split = (ILayerSplittable)problem.Inner;
        for (int k = 0; k < scalars.Length; k++)
            foreach (var key in split.OwnedScalars(Plan!.Ranges[k]))
                merged[key] = scalars[k].Scalars[key];
        if (merged.Count > 0) target.RestoreScalars(merged);
        log.Clear();
    }

    /// A segment that lost the run (its silo restarted, the grain activated afresh).
    private sealed class SegmentLostException(string message) : Exception(message);

    private bool Lost(Exception e) => segments.IsTransient(e) || e is SegmentLostException or ObjectDisposedException or TimeoutException;

    private SegmentStepReply[] StepAll(SegmentStepRequest[] requests) => FailFast(requests.Select(async r =>
    {
        int k = Array.IndexOf(requests, r);
        var reply = await segments.StepAsync(k, r);
        if (reply.Status != ShardStatus.Done)
            throw new SegmentLostException($"segment {k} on silo {reply.Silo} answered {reply.Status} at step {r.Step} (its silo restarted)");
        return reply;
    }).ToArray());

    /// A segment was lost: every segment's step in progress is ended, every segment joins again
    /// (the lost one's grain activated on a surviving silo), receives the coordinator's state as of
    /// the last pull, and replays the steps since; the step is then taken again. The steps are
    /// deterministic, so the run ends as if nothing had happened.
    private void Recover(long step, Exception cause)
    {
        Event(step, $"a segment was lost at step {step} ({cause.GetType().Name}: {OneLine(cause.Message)}); every segment joins again and replays the {log.Count} steps since the state was last pulled");
        var timer = Stopwatch.StartNew();
        foreach (var k in Enumerable.Range(0, segments.Count))
        {
            try { segments.AbortAsync(k, runId).Wait(TimeSpan.FromSeconds(5)); }
            catch (Exception) { /* a lost segment has nothing to end */ }
        }
        try { Wait(Task.WhenAll(Enumerable.Range(0, segments.Count).Select(JoinAsync))); }
        catch (DistributedException e) { throw new DistributedException($"{e.Message}; the checkpoint holds the last completed epoch (lifting resume)"); }
        Push();
        foreach (var logged in log) StepAll(logged);
        Event(step, string.Create(CultureInfo.InvariantCulture, $"recovered in {timer.Elapsed.TotalSeconds:F1} s: segments on {string.Join(", ", Layout.Select(p => p?.Silo))}; step {step} is taken again"));
    }

    private void Step(SegmentedGame game, IReadOnlyList<string> moving)
    {
        var batch = game.Batch;
        var requests = Enumerable.Range(0, segments.Count).Select(k => new SegmentStepRequest
        {
            RunId = runId, Step = batch.Step, Epoch = (int)(batch.Step / record.BatchesPerEpoch) + 1, Epochs = options.Epochs,
            Indices = game.Indices, Players = moving.ToArray(), Iteration = game.Iteration, Iterations = options.IterationsPerBatch,
        }).ToArray();
        SegmentStepReply[] replies;
        var lost = (Stopwatch?)null;
        while (true)
        {
            try
            {
                replies = StepAll(requests);
                break;
            }
            catch (Exception e) when (Lost(e))
            {
                lost ??= Stopwatch.StartNew();
                if (lost.Elapsed > settings.WorkerTimeout)
                    throw new DistributedException($"a segment was lost at step {batch.Step} and the run could not recover within {settings.WorkerTimeout.TotalSeconds:F0} s ({e.GetType().Name}: {OneLine(e.Message)}); the checkpoint holds the last completed epoch (lifting resume)");
                try { Recover(batch.Step, e); }
                catch (Exception again) when (Lost(again)) { /* lost again while recovering: the loop tries once more */ }
            }
        }
        log.Add(requests);
        game.Iteration++;
        lock (gate)
        {
            if (game.Iteration == 1) Steps++;
            BytesToSegments += requests.Sum(r => r.Indices.Length * 8L);
            for (int k = 0; k < replies.Length; k++)
            {
                BytesBetweenSegments += replies[k].BytesSent;
                SegmentBytes[k] += replies[k].BytesSent;
                SegmentSeconds[k] += replies[k].Seconds;
                SegmentWaitSeconds[k] += replies[k].WaitSeconds;
            }
        }
        game.Take(replies);
        problem!.Dirty = true;
    }

    public void Leave()
    {
        try { Wait(Task.WhenAll(Enumerable.Range(0, segments.Count).Select(k => segments.LeaveAsync(k)))); }
        catch (Exception) { /* a segment already gone has nothing to drop */ }
    }

    public void Dispose() => segments.Dispose();

    private sealed class SegmentedFormulation(LayerParallelRun run, IFormulation inner) : IFormulation
    {
        public string Name => inner.Name;
        public string Description => inner.Description;
        public IReadOnlyList<string> PlayerNames => inner.PlayerNames;
        public bool HasMaximisingPlayers => inner.HasMaximisingPlayers;
        public IReadOnlyList<SubProblem> DefaultSchedule => inner.DefaultSchedule;
        public ILiftedProblem Lift(LiftContext context, Weights weights) => run.Lift(inner, context, weights);
    }

    /// The coordinator's problem: the method's own, brought up to date from the segments whenever
    /// the trainer reads it.
    private sealed class SegmentedProblem(LayerParallelRun run, ILiftedProblem inner) : ILiftedProblem, ICheckpointable
    {
        public ILiftedProblem Inner => inner;
        /// The segments stepped since the last pull.
        public bool Dirty { get; set; }
        /// The coordinator's state changed (a checkpoint restored) since the segments last received
        /// it; a fresh run's segments start from the coordinator's initial state (the joins compared
        /// its fingerprint), so nothing is pushed then.
        public bool Stale { get; set; }

        private ILiftedProblem Synced
        {
            get
            {
                if (Dirty)
                {
                    run.Pull();
                    Dirty = false;
                }
                return inner;
            }
        }

        public IFormulation Formulation => run.Formulation;
        public Weights Weights => inner.Weights;
        public ExampleStore Store => inner.Store;
        public long StateBytes => inner.StateBytes;
        public void EndEpoch(int epoch) => Synced.EndEpoch(epoch);
        public void Finish() => Synced.Finish();
        public IReadOnlyList<double> MeasureDefects(Tensor? rows = null) => Synced.MeasureDefects(rows);
        public IReadOnlyDictionary<string, double> Diagnostics => Synced.Diagnostics;
        public IReadOnlyDictionary<string, Tensor> StateTensors => ((ICheckpointable)Synced).StateTensors;
        public IReadOnlyDictionary<string, double> StateScalars => ((ICheckpointable)Synced).StateScalars;

        public void RestoreScalars(IReadOnlyDictionary<string, double> scalars)
        {
            ((ICheckpointable)inner).RestoreScalars(scalars);
            Stale = true;
        }

        public IBatchGame Batch(MiniBatch batch)
        {
            if (Stale)
            {
                if (Dirty) throw new InvalidOperationException("The coordinator's state changed while the segments held newer state.");
                run.Push();
                run.log.Clear();
                Stale = false;
            }
            var game = new SegmentedGame(batch, inner.Formulation.PlayerNames);
            run.current = game;
            return game;
        }

        public void Dispose() => inner.Dispose();
    }

    /// A mini-batch as the coordinator sees it: the indices it sends, and what the segments report.
    private sealed class SegmentedGame : IBatchGame
    {
        private static readonly Tensor Placeholder = zeros(1).DetachFromDisposeScope();
        private double loss = double.NaN, objective = double.NaN;
        private double[] defects = Array.Empty<double>(), multiplierNorms = Array.Empty<double>();

        public SegmentedGame(MiniBatch batch, IReadOnlyList<string> players)
        {
            Batch = batch;
            using var cpu = batch.Indices.cpu();
            Indices = cpu.data<long>().ToArray();
            // Names only: the players' variables live on the segments.
            Players = players.Select(n => new Player(n, Role.Minimise, new[] { Placeholder }, StepRules.Constant(1), new[] { StepState.Empty })).ToArray();
        }

        public MiniBatch Batch { get; }
        public long[] Indices { get; }
        public int Iteration { get; set; }
        public IReadOnlyList<Player> Players { get; }

        public IReadOnlyList<IReadOnlyList<Tensor>> Operator(IReadOnlyList<Player> players) =>
            throw new InvalidOperationException("A layer-parallel game is evaluated on its segments.");

        public void Take(SegmentStepReply[] replies)
        {
            loss = replies.Sum(r => r.Loss);
            objective = replies.Sum(r => r.Objective);
            // Each cut's defect comes from the segment whose block ends in it (the others report 0).
            int cuts = replies.Max(r => r.Defects.Length);
            defects = Enumerable.Range(0, cuts).Select(c => replies.Sum(r => c < r.Defects.Length ? r.Defects[c] : 0)).ToArray();
            multiplierNorms = replies.SelectMany(r => r.MultiplierNorms).ToArray();
        }

        public double Objective() => objective;
        public IReadOnlyList<double> Defects => defects;
        public IReadOnlyList<double> MultiplierNorms => multiplierNorms;
        public double Loss => loss;
        public double LiftedObjective => objective;
        /// The segments write their rows back after the batch's last iteration.
        public void Commit() { }
        public void Dispose() { }
    }

    private sealed class SegmentedSolver(LayerParallelRun run) : ISolver
    {
        public string Name => run.method.Solver.Name;
        public int MemorySlots => run.method.Solver.MemorySlots;

        public void Step(IGame game)
        {
            var current = run.current ?? throw new InvalidOperationException("No layer-parallel game is open.");
            run.Step(current, game.Players.Select(p => p.Name).ToArray());
        }
    }
}
