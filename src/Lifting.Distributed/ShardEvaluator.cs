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

/// A replica's computation: the run's lifted problem built from its settings exactly as the
/// trainer builds it (seeded initialisation, then the lift), and for each request the game of its
/// shard at the coordinator's shared values, the inner solves the step asks for, and the
/// operator of the requested players. Everything runs on one thread of its own, so that LibTorch's
/// dispose scopes (per thread) nest as in the trainer: one scope for the step's game, one per
/// request inside it.
public sealed class ShardEvaluator : IDisposable
{
    private readonly WorkThread thread = new("lifting replica");
    private ShardJob? job;
    private ILiftedProblem? problem;
    private Weights? weights;
    private DataParallelPlan? plan;
    private int epoch;
    private long gameStep = -1;
    private IBatchGame? game;
    private MiniBatch? batch;
    private DisposeScope? stepScope;
    private int innerDone;

    private ShardEvaluator() { }

    public string ProgramFingerprint { get; private set; } = "";
    public string DataFingerprint { get; private set; } = "";

    /// Builds the run from `config` with `factory`; errors (bad settings, a method not covered)
    /// come back as exceptions with one-line messages.
    public static async Task<ShardEvaluator> CreateAsync(IShardJobFactory factory, string config)
    {
        var evaluator = new ShardEvaluator();
        try
        {
            await evaluator.Run(() => evaluator.Build(factory, config));
            return evaluator;
        }
        catch
        {
            evaluator.Dispose();
            throw;
        }
    }

    private void Build(IShardJobFactory factory, string config)
    {
        job = factory.Create(config);
        var options = job.Options;
        options.Validate();
        VectorMath.Prepare();
        NativeMemory.Configure(); // the C heap's thresholds, as the trainer sets them
        // As the trainer does: the seed, then the initial weights, then the lift.
        random.manual_seed(options.Seed);
        weights = job.Program.Initialise(options.Seed, options.Device, options.DType);
        var context = new LiftContext(job.Program, job.Data.Train, options.Device, options.DType, options.Seed, job.Method.StepRules, job.Method.Solver.MemorySlots);
        problem = job.Method.Formulation.Lift(context, weights);
        ProgramFingerprint = Fingerprints.Problem(job.Program, problem);
        DataFingerprint = Fingerprints.Data(job.Data.Train);
        plan = DataParallelPlan.Of(job.Method, problem, job.Data.Train);
    }

    public Task<ShardReply> EvaluateAsync(ShardRequest request, string silo) => Run(() => Evaluate(request, silo));

    private Task<T> Run<T>(Func<T> f) => thread.Run(f);

    private Task Run(Action f) => thread.Run(f);

    private ShardReply Evaluate(ShardRequest r, string silo)
    {
        var timer = Stopwatch.StartNew();
        var p = problem!;
        if (r.Epoch != epoch)
        {
            // As the trainer does at the start of every epoch.
            foreach (var player in job!.Method.Formulation.PlayerNames)
                if (job.Method.StepRules(player) is IScheduledStepRule scheduled) scheduled.Advance(r.Epoch, r.Epochs);
            epoch = r.Epoch;
        }
        bool replay = r.InnerPoints.Length > 0;
        if (gameStep != r.Step || replay)
        {
            DropGame();
            if (!replay && (r.InnerSolves > 1 || (r.InnerSolves == 1 && !r.RunInner)))
                return new ShardReply { Status = ShardStatus.NeedsReplay, Silo = silo };
            if (r.Scalars.Count > 0) ((ICheckpointable)p).RestoreScalars(r.Scalars);
            // The game may compute from the shared values when it is made (a bilevel method's
            // forward pass): they are the step's before it is.
            SetShared(plan!.SharedVariables, r.InnerPoints.Length > 0 ? r.InnerPoints[0] : r.Shared);
            stepScope = NewDisposeScope();
            var indices = tensor(r.Indices, device: job!.Data.Train.Inputs.device);
            var inputs = job.Data.Train.Inputs.index_select(0, indices);
            var dtype = job.Options.DType;
            batch = new MiniBatch(indices, inputs.dtype == dtype ? inputs : inputs.to_type(dtype), job.Data.Train.Labels.index_select(0, indices)) { Step = r.Step };
            game = p.Batch(batch);
            gameStep = r.Step;
            innerDone = 0;
        }
        using var scope = NewDisposeScope();
        var g = game!;
        foreach (var point in r.InnerPoints)
        {
            SetShared(g, point);
            SolveInner(g);
        }
        if (r.RunInner)
        {
            if (innerDone != r.InnerSolves - 1) return new ShardReply { Status = ShardStatus.NeedsReplay, Silo = silo };
            SetShared(g, r.Shared);
            SolveInner(g);
        }
        else if (innerDone != r.InnerSolves) return new ShardReply { Status = ShardStatus.NeedsReplay, Silo = silo };
        SetShared(g, r.Shared);
        var players = r.Players.Select(n => g.Players.First(q => q.Name == n)).ToArray();
        IReadOnlyList<IReadOnlyList<Tensor>> directions;
        // The other players (a bilevel method's activations) are held, as the solver holds them.
        using (var view = new Restricted(g, r.Players)) directions = view.Operator(players);
        var named = new List<(string, Tensor)>();
        for (int i = 0; i < players.Length; i++)
            for (int j = 0; j < directions[i].Count; j++) named.Add(($"{players[i].Name}/{j}", directions[i][j]));
        return new ShardReply
        {
            Status = ShardStatus.Done,
            Directions = TensorBytes.Encode(named),
            Loss = g.Loss,
            Objective = g.LiftedObjective,
            Silo = silo,
            Seconds = timer.Elapsed.TotalSeconds,
        };
    }

    private void SolveInner(IBatchGame g)
    {
        var inner = plan!.Inner ?? throw new InvalidOperationException($"{job!.Method.Name} has no inner solve, but the coordinator asked for one.");
        using (var view = new Restricted(g, inner.InnerPlayers)) InnerSolve.Solve(inner.Inner, view, inner.MaxIterations, inner.Tolerance);
        innerDone++;
    }

    /// Copies the coordinator's values into the game's shared players' variables.
    private static void SetShared(IBatchGame g, byte[] bytes) =>
        SetShared(g.Players.Where(q => !q.RowIndexed).Select(q => (q.Name, q.Variables)).ToArray(), bytes);

    private static void SetShared(IReadOnlyList<(string Name, IReadOnlyList<Tensor> Variables)> players, byte[] bytes)
    {
        using var file = TensorBytes.Decode(bytes);
        using var _ = no_grad();
        foreach (var (name, variables) in players)
            for (int j = 0; j < variables.Count; j++)
                variables[j].copy_(file[$"{name}/{j}"]);
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
        innerDone = 0;
    }

    public void Dispose()
    {
        if (thread.Stopped) return;
        thread.Stop(() =>
        {
            DropGame();
            problem?.Dispose();
            weights?.Dispose();
            job?.Dispose();
        });
    }
}
