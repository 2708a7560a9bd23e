using Lifting.Data;
using Lifting.Programs;
using Lifting.Training;

namespace Lifting.Distributed;

/// What a replica trains: the program, the data, the method and the options a run's settings
/// resolve to, built on the replica's side from the settings the coordinator sends (so that
/// images never travel: each worker reads the data itself).
public sealed class ShardJob : IDisposable
{
    public ShardJob(NestedProgram program, DataSplit data, ResolvedMethod method, TrainingOptions options)
    {
        Program = program;
        Data = data;
        Method = method;
        Options = options;
    }

    public NestedProgram Program { get; }
    public DataSplit Data { get; }
    public ResolvedMethod Method { get; }
    public TrainingOptions Options { get; }

    public void Dispose() => Data.Dispose();
}

/// Turns a run's settings (a config.json text) into a job; the host provides it (the worker's
/// `lifting` reads settings as `lifting train --config` does). Errors are one line.
public interface IShardJobFactory
{
    ShardJob Create(string config);
}
