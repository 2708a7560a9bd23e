using System.Collections.Concurrent;
using System.Diagnostics;
using Lifting.Data;
using Lifting.Formulations;
using Lifting.Programs;
using Lifting.Solvers;
using Lifting.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace Lifting.Distributed;

/// Sends a segment's gradient part to another segment of the run (`Deliver` there).
public delegate void SegmentSend(int segment, string key, byte[] data);

/// A segment's computation in a layer-parallel run: the run's lifted problem built from its
/// settings exactly as the trainer builds it, restricted to the segment's blocks, and for each
/// step request the batch's game and one step of the method's solver on the segment's players.
/// The gradient parts of the boundary cuts' variables go to the neighbours through `send` and
/// come back through `Deliver`. Everything runs on one thread of its own (LibTorch's dispose
/// scopes are per thread).
public sealed class SegmentEvaluator : IDisposable, IBoundaryExchange
{
    private readonly WorkThread thread = new("lifting segment");
    private readonly ConcurrentDictionary<string, TaskCompletionSource<byte[]>> mailbox = new();
    private readonly CancellationTokenSource stopping = new();
    private ShardJob? job;
    private ILiftedProblem? problem;
    private Weights? weights;
    private SegmentSend? send;
    private BlockRange range;
    private int segment;
    private TimeSpan exchangeTimeout;
    private string[] owned = Array.Empty<string>();
    private int epoch;
    private long gameStep = -1;
    private IBatchGame? game;
    private MiniBatch? batch;
    private DisposeScope? stepScope;
    private long bytesSent;
    // Tensors sent and received per cut and name in the current game: a message's sequence number.
    private readonly Dictionary<string, int> sends = new(), receives = new();

    private SegmentEvaluator() { }

    public string ProgramFingerprint { get; private set; } = "";
    /// Seconds this segment's steps spent waiting for its neighbours' gradient parts.
    public double WaitSeconds { get; private set; }
    public string DataFingerprint { get; private set; } = "";

    public static async Task<SegmentEvaluator> CreateAsync(IShardJobFactory factory, SegmentJoinRequest request, SegmentSend send)
    {
        var evaluator = new SegmentEvaluator();
        try
        {
            await evaluator.Run(() => evaluator.Build(factory, request, send));
            return evaluator;
        }
        catch
        {
            evaluator.Dispose();
            throw;
        }
    }

    private void Build(IShardJobFactory factory, SegmentJoinRequest request, SegmentSend sender)
    {
        job = factory.Create(request.Config);
        var options = job.Options;
        options.Validate();
        VectorMath.Prepare();
        NativeMemory.Configure(); // the C heap's thresholds, as the trainer sets them
        random.manual_seed(options.Seed);
        weights = job.Program.Initialise(options.Seed, options.Device, options.DType);
        var context = new LiftContext(job.Program, job.Data.Train, options.Device, options.DType, options.Seed, job.Method.StepRules, job.Method.Solver.MemorySlots);
        problem = job.Method.Formulation.Lift(context, weights);
        ProgramFingerprint = Fingerprints.Problem(job.Program, problem);
        DataFingerprint = Fingerprints.Data(job.Data.Train);
        var plan = LayerPlan.Of(job.Method, problem, request.Firsts.Length, options.BatchSize);
        segment = request.Segment;
        range = new BlockRange(request.Firsts[segment], request.Ends[segment]);
        var mine = plan.Ranges[segment];
        if (mine != range)
            throw new ArgumentException($"the coordinator gave segment {segment} {range}, this worker's plan gives it {mine}");
        var split = (ILayerSplittable)problem;
        split.Restrict(range, this);
        owned = split.Owned(range).ToArray();
        send = sender;
        exchangeTimeout = TimeSpan.FromSeconds(request.ExchangeTimeoutSeconds);
    }

    private Task<T> Run<T>(Func<T> f) => thread.Run(f);

    private Task Run(Action f) => thread.Run(f);

    /// A neighbour's gradient part, delivered (on any thread) before or while this segment waits for it.
    public void Deliver(string key, byte[] data) => Slot(key).TrySetResult(data);

    private TaskCompletionSource<byte[]> Slot(string key) =>
        mailbox.GetOrAdd(key, _ => new TaskCompletionSource<byte[]>(TaskCreationOptions.RunContinuationsAsynchronously));

    /// The segment on the other side of cut `cut` (one of this range's ends).
    private int Neighbour(int cut) => cut == range.First - 1 ? segment - 1 : segment + 1;

    /// Called by the game on this segment's thread: `value` goes to the neighbour across `cut`.
    public void Send(int cut, string name, Tensor value)
    {
        var id = $"{cut}/{name}";
        sends.TryGetValue(id, out var n);
        sends[id] = n + 1;
        var bytes = TensorBytes.Encode(new[] { (name, value) });
        bytesSent += bytes.Length;
        send!(Neighbour(cut), $"{gameStep}/{id}/{n}/from{segment}", bytes);
    }

    /// Called by the game on this segment's thread: waits for the neighbour's next tensor of `name`.
    public Tensor Receive(int cut, string name)
    {
        int neighbour = Neighbour(cut);
        var id = $"{cut}/{name}";
        receives.TryGetValue(id, out var n);
        receives[id] = n + 1;
        var key = $"{gameStep}/{id}/{n}/from{neighbour}";
        var slot = Slot(key);
        var waited = Stopwatch.StartNew();
        try
        {
            if (!slot.Task.Wait(exchangeTimeout, stopping.Token))
                throw new TimeoutException($"segment {segment}: no {name} of cut {cut + 1} from segment {neighbour} within {exchangeTimeout.TotalSeconds:F0} s (step {gameStep})");
        }
        catch (OperationCanceledException) { throw new ObjectDisposedException($"segment {segment} left the run while waiting for segment {neighbour}"); }
        mailbox.TryRemove(key, out _);
        WaitSeconds += waited.Elapsed.TotalSeconds;
        using var file = TensorBytes.Decode(slot.Task.Result);
        return file[name].to(job!.Options.Device).DetachFromDisposeScope();
    }

    public Task LoadAsync(SegmentState state) => Run(() => Load(state));

    private void Load(SegmentState state)
    {
        DropGame();
        var p = (ICheckpointable)problem!;
        StateChunks.Apply(state.Tensors, p.StateTensors);
        if (state.Scalars.Count > 0) p.RestoreScalars(state.Scalars);
        epoch = -1; // the coordinator's state: its epochs have ended (`Step`)
    }

    private List<byte[]> pulled = new();

    public Task<SegmentState> PullAsync(int chunk) => Run(() => Pull(chunk));

    private SegmentState Pull(int chunk)
    {
        var p = (ICheckpointable)problem!;
        if (chunk == 0)
        {
            var all = p.StateTensors;
            pulled = StateChunks.Encode(owned.Select(k => (k, all[k])));
        }
        if (chunk < 0 || chunk >= pulled.Count) throw new ArgumentOutOfRangeException(nameof(chunk), $"the segment's state has {pulled.Count} chunks");
        var reply = new SegmentState { Tensors = pulled[chunk], Scalars = p.StateScalars.ToDictionary(q => q.Key, q => q.Value), Chunks = pulled.Count };
        if (chunk == pulled.Count - 1) pulled = new();
        return reply;
    }

    public Task<SegmentStepReply> StepAsync(SegmentStepRequest request, string silo) => Run(() => Step(request, silo));

    private SegmentStepReply Step(SegmentStepRequest r, string silo)
    {
        var timer = Stopwatch.StartNew();
        if (r.Epoch != epoch)
        {
            // As the trainer does at the end of every epoch (a state just loaded is the
            // coordinator's, which has ended its epochs already) and at the start of every epoch.
            if (epoch > 0)
                for (int e = epoch; e < r.Epoch; e++) problem!.EndEpoch(e);
            foreach (var player in job!.Method.Formulation.PlayerNames)
                if (job.Method.StepRules(player) is IScheduledStepRule scheduled) scheduled.Advance(r.Epoch, r.Epochs);
            epoch = r.Epoch;
        }
        bytesSent = 0;
        var waitedBefore = WaitSeconds;
        if (gameStep != r.Step)
        {
            DropGame();
            stepScope = NewDisposeScope();
            var indices = tensor(r.Indices, device: job!.Data.Train.Inputs.device);
            var inputs = job.Data.Train.Inputs.index_select(0, indices);
            var dtype = job.Options.DType;
            batch = new MiniBatch(indices, inputs.dtype == dtype ? inputs : inputs.to_type(dtype), job.Data.Train.Labels.index_select(0, indices)) { Step = r.Step };
            gameStep = r.Step;
            sends.Clear();
            receives.Clear();
            game = problem!.Batch(batch);
        }
        using (var scope = NewDisposeScope())
        {
            var g = game!;
            var moving = r.Players.Where(n => g.Players.Any(p => p.Name == n)).ToArray();
            if (moving.Length > 0)
            {
                using var view = moving.Length < g.Players.Count ? new Restricted(g, moving) : null;
                job!.Method.Solver.Step(view ?? (IGame)g);
            }
        }
        var reply = new SegmentStepReply
        {
            Status = ShardStatus.Done,
            Loss = game!.Loss,
            Objective = game.LiftedObjective,
            Defects = game.Defects.ToArray(),
            MultiplierNorms = game.MultiplierNorms.ToArray(),
            BytesSent = bytesSent,
            Seconds = timer.Elapsed.TotalSeconds,
            WaitSeconds = WaitSeconds - waitedBefore,
            Silo = silo,
        };
        if (r.Iteration == r.Iterations - 1)
        {
            game.Commit();
            DropGame();
        }
        return reply;
    }

    private void DropGame()
    {
        game?.Dispose();
        game = null;
        batch?.Dispose();
        batch = null;
        stepScope?.Dispose();
        stepScope = null;
        gameStep = -1;
    }

    /// Ends a step waiting for a neighbour that was lost (the run re-joins every segment).
    public void Abort() => stopping.Cancel();

    public void Dispose()
    {
        if (thread.Stopped) return;
        stopping.Cancel();
        thread.Stop(() =>
        {
            DropGame();
            problem?.Dispose();
            weights?.Dispose();
            job?.Dispose();
        });
    }
}
