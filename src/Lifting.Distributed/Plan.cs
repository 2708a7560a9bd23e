using System.Reflection;
using System.Security.Cryptography;
using System.Text;
using Lifting.Data;
using Lifting.Formulations;
using Lifting.Programs;
using Lifting.Solvers;
using static TorchSharp.torch;

namespace Lifting.Distributed;

/// A run of a method split over replicas: what every replica computes on its shard, and what the
/// coordinator does with their sums.
///
/// Covered directly: methods whose game's players are all shared (backprop, fenchel-bp, fa, dfa,
/// sign-symmetric, dsn; distprop with per-class multipliers): the coordinator runs the method's
/// solver, every operator evaluation is the shard-weighted sum of the replicas'. And bilevel
/// methods whose per-batch variables die with the step (pcn, lpom, chl, eqprop: `InnerSolve` with
/// tolerance 0): each replica runs the inner solve on its shard, the coordinator runs the outer
/// solver on the summed weight directions. Refused: a per-example store kept across steps
/// (extraprop, gda, auglag, penalty, regularized, distprop's per-example multipliers), alternating
/// sub-problems (the am-* methods), an inner solve stopped by a tolerance (its stop would depend on
/// the shard), and batch statistics or dropout (per shard, not per batch).
public sealed class DataParallelPlan
{
    private DataParallelPlan(IReadOnlyList<(string Name, IReadOnlyList<Tensor> Variables)> shared, InnerSolve? inner, ISolver coordinatorSolver)
    {
        SharedVariables = shared;
        SharedPlayers = shared.Select(p => p.Name).ToArray();
        Inner = inner;
        CoordinatorSolver = coordinatorSolver;
    }

    /// The players the coordinator holds and steps (every player not indexed by the batch's rows).
    public IReadOnlyList<string> SharedPlayers { get; }
    /// Their variables: the problem's own tensors, which every game of the problem uses.
    public IReadOnlyList<(string Name, IReadOnlyList<Tensor> Variables)> SharedVariables { get; }
    /// The bilevel solve whose inner iterations each replica runs on its shard (null: none).
    public InnerSolve? Inner { get; }
    /// The solver the coordinator runs on the summed directions.
    public ISolver CoordinatorSolver { get; }

    /// The plan for `method` on `problem`, or an `ArgumentException` saying why the method is not
    /// covered. Looks at a one-example game (its players), leaving the problem's state as it was.
    public static DataParallelPlan Of(ResolvedMethod method, ILiftedProblem problem, Dataset train)
    {
        var name = method.Name;
        if (problem.Weights.Program.HasModes)
            throw new ArgumentException($"data-parallel training: {name} on a program with batch normalisation or dropout is not data-parallel here " +
                                        "(each replica would take its shard's batch statistics and masks, not the batch's); docs/distributed.md");
        if (problem is IDrawsPerBatch draws)
            throw new ArgumentException($"data-parallel training: {name} draws {draws.Draws} over each mini-batch; per shard the draws would differ from the one-process run's (docs/distributed.md)");
        if (problem.Store.Names.Any())
            throw new ArgumentException($"data-parallel training: {name} keeps per-example rows across steps ({string.Join(", ", problem.Store.Names.Where(n => !n.Contains('#')).Select(n => "store/" + n))}); " +
                                        "data-parallel training covers methods whose per-batch variables die with the step (docs/distributed.md, \"What is covered\")");
        string[] rowPlayers;
        (string, IReadOnlyList<Tensor>)[] shared;
        var checkpointable = problem as ICheckpointable;
        var scalars = checkpointable?.StateScalars.ToDictionary(p => p.Key, p => p.Value);
        using (var scope = NewDisposeScope())
        {
            using var one = ScalarFactories.Arange(1, ScalarType.Int64, train.Inputs.device);
            using var batch = new MiniBatch(one.clone(), train.Inputs.index_select(0, one).to_type(problem.Weights.Tensors[0].dtype), train.Labels.index_select(0, one));
            using var game = problem.Batch(batch);
            rowPlayers = game.Players.Where(p => p.RowIndexed).Select(p => p.Name).ToArray();
            shared = game.Players.Where(p => !p.RowIndexed).Select(p => (p.Name, p.Variables)).ToArray();
        }
        if (scalars is { Count: > 0 }) checkpointable!.RestoreScalars(scalars); // e.g. DistProp's variate step, advanced by the game
        if (rowPlayers.Length == 0) return new DataParallelPlan(shared, null, method.Solver);
        if (method.Solver is InnerSolve inner && inner.InnerPlayers.OrderBy(n => n).SequenceEqual(rowPlayers.OrderBy(n => n)))
        {
            if (inner.Tolerance > 0)
                throw new ArgumentException($"data-parallel training: {name} with --tolerance {inner.Tolerance:G3} stops its inference when the whole batch has settled; " +
                                            "per shard that stop would differ (give --tolerance 0 for data-parallel training)");
            return new DataParallelPlan(shared, inner, inner.Outer);
        }
        throw new ArgumentException($"data-parallel training: {name} moves per-batch variables ({string.Join(", ", rowPlayers)}) with its solver {method.Solver.Name} between weight steps; " +
                                    "data-parallel training covers methods whose only per-batch work is an inference before the weight step (docs/distributed.md, \"What is covered\")");
    }
}

/// Identities compared when a replica joins: equal builds, programs, initial states and data
/// compute equal bits.
public static class Fingerprints
{
    /// The build: the module version ids of Lifting's assemblies and TorchSharp's (deterministic
    /// builds give equal ids for equal sources), or LIFTING_BUILD_ID when set (a test stands in a
    /// worker of another build with it).
    public static string Build(params Assembly[] more)
    {
        var overridden = Environment.GetEnvironmentVariable("LIFTING_BUILD_ID");
        if (!string.IsNullOrEmpty(overridden)) return overridden;
        var assemblies = new[] { typeof(ResolvedMethod).Assembly, typeof(Fingerprints).Assembly, typeof(TorchSharp.torch).Assembly }.Concat(more);
        var text = string.Join(";", assemblies.Distinct().Select(a => $"{a.GetName().Name}:{a.ManifestModule.ModuleVersionId}"));
        return Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes(text)))[..16].ToLowerInvariant();
    }

    /// The program's parameters (names, shapes) and the lifted problem's whole state tensor by tensor.
    public static string Problem(NestedProgram program, ILiftedProblem problem)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData(Encoding.UTF8.GetBytes(program.ToString() ?? ""));
        var names = program.ParameterNames;
        for (int i = 0; i < names.Count; i++)
            hash.AppendData(Encoding.UTF8.GetBytes($"{names[i]}[{string.Join(",", problem.Weights.Tensors[i].shape)}]"));
        if (problem is ICheckpointable c)
            foreach (var (name, t) in c.StateTensors.OrderBy(p => p.Key, StringComparer.Ordinal))
                Append(hash, name, t);
        return Convert.ToHexString(hash.GetHashAndReset()).ToLowerInvariant();
    }

    /// The training split's inputs and labels.
    public static string Data(Dataset train)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        Append(hash, "inputs", train.Inputs);
        Append(hash, "labels", train.Labels);
        return Convert.ToHexString(hash.GetHashAndReset()).ToLowerInvariant();
    }

    /// Refuses, in one line, a worker whose build, settings, data or program differ from the
    /// coordinator's (`who`: the replica or segment it was to hold).
    public static void Verify(string who, JoinReply reply, string build, string program, string data)
    {
        var where = $"the worker on silo {reply.Silo} (host {reply.Host}, pid {reply.ProcessId})";
        if (reply.Build != build)
            throw new DistributedException($"{where} runs another build of lifting ({reply.Build}; this one is {build}): start workers of the same build");
        if (reply.Refusal is { } refusal) throw new DistributedException($"{where} cannot take {who}: {refusal}");
        if (reply.Data != data)
            throw new DistributedException($"mismatched data: {where} read a training split with SHA-256 {reply.Data[..12]}…, this process {data[..12]}… (does --data name other files there?)");
        if (reply.Program != program)
            throw new DistributedException($"mismatched programs: {where} built a program or initial state with SHA-256 {reply.Program[..12]}…, this process {program[..12]}…");
    }

    private static void Append(IncrementalHash hash, string name, Tensor t)
    {
        using var _ = no_grad();
        using var cpu = t.detach().cpu().contiguous();
        hash.AppendData(Encoding.UTF8.GetBytes($"{name}:{cpu.dtype}[{string.Join(",", cpu.shape)}]"));
        if (cpu.NumberOfElements > 0) hash.AppendData(cpu.bytes);
    }
}
