using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using Lifting.Distributed;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Orleans;

namespace Lifting.Host;

/// Turns the settings a coordinator sends (its run's config.json) into the run on a worker, as
/// `lifting train --config` would; the worker's own thread count stays.
public sealed class HostJobFactory : IShardJobFactory
{
    public ShardJob Create(string config)
    {
        if (JsonNode.Parse(config) is not JsonObject o) throw new ArgumentException("the run's settings are not a JSON object");
        o.Remove("threads");
        var experiment = Experiment.FromJson(o, new Experiment());
        var run = PreparedRun.Prepare(experiment);
        return new ShardJob(run.Program, run.Data, run.Method, run.Options);
    }

    /// The build identity workers and coordinators compare (the host's assembly included).
    public static string Build => Fingerprints.Build(typeof(HostJobFactory).Assembly);
}

/// The options `train` and `resume` take to train on several processes (docs/distributed.md).
internal sealed class ClusterFlags
{
    public Option<string> Workers { get; } = new("--workers") { Description = "data-parallel training on N worker processes started here (localhost clustering; they end with the run)", HelpName = "N" };
    public Option<string> Cluster { get; } = new("--cluster") { Description = "data-parallel training on the workers of a cluster whose membership is in Redis (lifting worker --cluster …)", HelpName = "redis://HOST:PORT" };
    public Option<string> ClusterId { get; } = new("--cluster-id") { Description = "with --cluster: the cluster's name, as its workers were given it [default: lifting]", HelpName = "ID" };
    public Option<string> Replicas { get; } = new("--replicas") { Description = "replicas (shards of each mini-batch) [default: one per worker; without --workers or --cluster: replicas in this process]", HelpName = "K" };
    public Option<string> TlsCert { get; } = new("--tls-cert") { Description = "with --cluster: the cluster's PKCS#12 certificate (TLS to the workers)", HelpName = "FILE" };
    public Option<string> TlsPassword { get; } = new("--tls-password") { Description = "the password of --tls-cert", HelpName = "PASSWORD" };
    public Option<string> WorkerTimeout { get; } = new("--worker-timeout") { Description = "seconds a replica may stay unreachable before the run stops [default: 120]", HelpName = "S" };
    public Option<string> Segments { get; } = new("--segments") { Description = "layer-parallel training: the lifted network's blocks split into K segments, one process each (distprop, am, multiple-shooting and penalty methods) [with --workers or --cluster: on the workers; otherwise: threads of this process]", HelpName = "K" };

    public static readonly string[] Names = { "workers", "cluster", "cluster-id", "replicas", "tls-cert", "tls-password", "worker-timeout", "segments" };

    public IEnumerable<Option> All => new Option[] { Workers, Cluster, ClusterId, Replicas, TlsCert, TlsPassword, WorkerTimeout, Segments };

    public ClusterRequest? Read(ParseResult parsed)
    {
        int? Positive(Option<string> o, string flag)
        {
            if (parsed.GetValue(o) is not { } text) return null;
            return int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) && n >= 1 ? n
                : throw new UsageException($"{flag}: '{text}' must be an integer >= 1");
        }
        var workers = Positive(Workers, "--workers");
        var replicas = Positive(Replicas, "--replicas");
        var timeout = Positive(WorkerTimeout, "--worker-timeout");
        var segments = Positive(Segments, "--segments");
        var cluster = parsed.GetValue(Cluster);
        var tls = parsed.GetValue(TlsCert);
        if (segments is not null && replicas is not null)
            throw new UsageException("--segments splits the network's blocks over processes, --replicas the mini-batch: give one of them");
        if (workers is null && cluster is null && replicas is null && segments is null)
        {
            if (tls is not null || parsed.GetValue(ClusterId) is not null || timeout is not null)
                throw new UsageException("--tls-cert, --cluster-id and --worker-timeout go with --workers N or --cluster redis://HOST:PORT");
            return null;
        }
        if (workers is not null && cluster is not null) throw new UsageException("--workers starts local workers, --cluster joins a cluster's workers: give one of them");
        if (workers is not null && workers > 64) throw new UsageException($"--workers {workers}: at most 64 local workers");
        ClusterAddress? address;
        try { address = cluster is null ? null : ClusterAddress.Parse(cluster); }
        catch (ArgumentException x) { throw new UsageException(x.Message); }
        if (tls is not null && cluster is null) throw new UsageException("--tls-cert: local workers (--workers) talk over loopback; TLS is for --cluster");
        ClusterTls? certificate;
        try { certificate = tls is null ? null : ClusterTls.Load(tls, parsed.GetValue(TlsPassword)); }
        catch (ArgumentException x) { throw new UsageException(x.Message); }
        return new ClusterRequest(workers, address, parsed.GetValue(ClusterId) ?? "lifting", replicas, certificate, TimeSpan.FromSeconds(timeout ?? 120)) { Segments = segments };
    }
}

internal sealed record ClusterRequest(int? Workers, ClusterAddress? Cluster, string ClusterId, int? Replicas, ClusterTls? Tls, TimeSpan WorkerTimeout)
{
    /// Layer-parallel training over this many segments (null: data-parallel).
    public int? Segments { get; init; }
}

/// Worker processes started by `train --workers N`: `lifting worker` on free loopback ports,
/// the first holding the localhost clustering's membership table, each ending with this process
/// (killed when the run ends; a worker also exits by itself when its parent is gone).
internal sealed class LocalWorkers : IDisposable
{
    private readonly List<(Process Process, StringBuilder Output)> processes = new();

    private LocalWorkers(string clusterId, int[] siloPorts, int[] gatewayPorts)
    {
        ClusterId = clusterId;
        SiloPorts = siloPorts;
        GatewayPorts = gatewayPorts;
    }

    public string ClusterId { get; }
    public int[] SiloPorts { get; }
    public int[] GatewayPorts { get; }
    public IReadOnlyList<int> ProcessIds => processes.Select(p => p.Process.Id).ToArray();

    public static LocalWorkers Start(int count, int threads)
    {
        var id = "lifting-" + Guid.NewGuid().ToString("N")[..8];
        var silo = Enumerable.Range(0, count).Select(_ => ClusterHosting.FreePort()).ToArray();
        var gateway = Enumerable.Range(0, count).Select(_ => ClusterHosting.FreePort()).ToArray();
        var workers = new LocalWorkers(id, silo, gateway);
        try
        {
            for (int i = 0; i < count; i++)
            {
                var args = new List<string>
                {
                    "worker", "--cluster-id", id, "--silo-port", Inv(silo[i]), "--gateway-port", Inv(gateway[i]),
                    "--threads", Inv(threads), "--parent", Inv(Environment.ProcessId),
                };
                if (i > 0) args.AddRange(new[] { "--primary", Inv(silo[0]) });
                workers.Launch(args);
            }
            return workers;
        }
        catch
        {
            workers.Dispose();
            throw;
        }
    }

    private static string Inv(int v) => v.ToString(CultureInfo.InvariantCulture);

    /// `dotnet exec lifting.dll worker …` from the folder this host runs from.
    private void Launch(IReadOnlyList<string> args)
    {
        var dll = Path.Combine(AppContext.BaseDirectory, "lifting.dll");
        if (!File.Exists(dll)) dll = typeof(LocalWorkers).Assembly.Location;
        var dotnet = Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") is { Length: > 0 } host ? host
            : Path.GetFileNameWithoutExtension(Environment.ProcessPath) == "dotnet" ? Environment.ProcessPath! : "dotnet";
        var info = new ProcessStartInfo(dotnet) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
        info.ArgumentList.Add("exec");
        info.ArgumentList.Add(dll);
        foreach (var a in args) info.ArgumentList.Add(a);
        var process = Process.Start(info) ?? throw new InvalidOperationException("--workers: could not start a worker process");
        var output = new StringBuilder();
        void Keep(string? line)
        {
            if (line is null) return;
            lock (output)
            {
                if (output.Length < 20_000) output.AppendLine(line);
            }
        }
        process.OutputDataReceived += (_, e) => Keep(e.Data);
        process.ErrorDataReceived += (_, e) => Keep(e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        processes.Add((process, output));
    }

    /// The first worker that exited, with the last line it printed (null: all running).
    public string? Exited()
    {
        foreach (var (p, output) in processes)
            if (p.HasExited)
            {
                string last;
                lock (output) last = output.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries).LastOrDefault()?.Trim() ?? "";
                return $"worker pid {p.Id} exited with code {p.ExitCode}{(last.Length > 0 ? $": {last}" : "")}";
            }
        return null;
    }

    public void Dispose()
    {
        foreach (var (p, _) in processes)
        {
            try
            {
                if (!p.HasExited) p.Kill(entireProcessTree: true);
                p.WaitForExit(10_000);
            }
            catch (InvalidOperationException) { }
            p.Dispose();
        }
        processes.Clear();
    }
}

/// A data-parallel run's cluster for the time of one command: the workers started or joined, the
/// client, the replicas, and cluster.json in the run folder (layout, events, traffic).
internal sealed class ClusterSession : IDisposable
{
    public const string File = "cluster.json";
    private readonly ClusterRequest request;
    private readonly object gate = new();
    private LocalWorkers? workers;
    private IHost? client;
    private IReadOnlyList<string> silos = Array.Empty<string>();
    private RunFolder? folder;
    private bool ended;

    private ClusterSession(ClusterRequest request) => this.request = request;

    /// The data-parallel run, or null for a layer-parallel one (`Layers`).
    public DataParallelRun? Run { get; private set; }
    public LayerParallelRun? Layers { get; private set; }
    public Lifting.Formulations.IFormulation Formulation => Run?.Formulation ?? Layers!.Formulation;
    public Lifting.Solvers.ISolver Solver => Run?.Solver ?? Layers!.Solver;

    /// Starts or reaches the workers and sets up the replicas; throws one-line errors before
    /// anything is written.
    public static ClusterSession Open(ClusterRequest request, PreparedRun run, Action<string> log)
    {
        var session = new ClusterSession(request);
        try
        {
            session.Start(run, log);
            return session;
        }
        catch
        {
            session.Dispose();
            throw;
        }
    }

    private void Start(PreparedRun run, Action<string> log)
    {
        IReplicaSet replicas;
        var options = new DataParallelOptions { WorkerTimeout = request.WorkerTimeout, Build = HostJobFactory.Build, Log = log };
        var config = run.Config().ToJsonString();
        if (request.Segments is { } k && request.Workers is null && request.Cluster is null)
        {
            Layers = new LayerParallelRun(new InProcessSegments(k, new HostJobFactory(), options.Build), config, run.Method, run.Options, options);
            Layers.Changed += () => Write(final: false);
            return;
        }
        if (request.Workers is null && request.Cluster is null)
            replicas = new InProcessReplicas(request.Replicas!.Value, new HostJobFactory(), options.Build);
        else
        {
            TimeSpan wait = TimeSpan.FromSeconds(30);
            if (request.Workers is { } n)
            {
                workers = LocalWorkers.Start(n, run.Experiment.Threads ?? 1);
                // Our own workers, all alive: a start that did not complete is tried once more.
                try { client = Connect(ClusterAddress.Localhost, workers.ClusterId, workers.GatewayPorts, null, TimeSpan.FromSeconds(60)); }
                catch (UsageException) when (workers.Exited() is null)
                {
                    client = Connect(ClusterAddress.Localhost, workers.ClusterId, workers.GatewayPorts, null, TimeSpan.FromSeconds(60));
                }
                silos = WaitForSilos(n, TimeSpan.FromSeconds(120));
            }
            else
            {
                client = Connect(request.Cluster!, request.ClusterId, Array.Empty<int>(), request.Tls, wait);
                silos = Active();
                if (silos.Count == 0) throw new UsageException($"--cluster {request.Cluster}: no worker is up in cluster '{request.ClusterId}'");
            }
            if (request.Segments is { } segments)
            {
                Layers = new LayerParallelRun(new OrleansSegments(client.Services.GetRequiredService<IClusterClient>(), segments), config, run.Method, run.Options, options);
                Layers.Changed += () => Write(final: false);
                return;
            }
            var count = request.Replicas ?? silos.Count;
            replicas = new OrleansReplicas(client.Services.GetRequiredService<IClusterClient>(), count);
        }
        Run = new DataParallelRun(replicas, config, run.Method, run.Options, options);
        Run.Changed += () => Write(final: false);
    }

    private static IHost Connect(ClusterAddress address, string id, int[] ports, ClusterTls? tls, TimeSpan wait)
    {
        try { return ClusterHosting.ConnectAsync(address, id, ports, tls, wait).GetAwaiter().GetResult(); }
        catch (DistributedException x) { throw new UsageException(x.Message); }
    }

    private IReadOnlyList<string> Active() =>
        ClusterHosting.ActiveSilosAsync(client!.Services.GetRequiredService<IClusterClient>()).GetAwaiter().GetResult();

    private IReadOnlyList<string> WaitForSilos(int n, TimeSpan wait)
    {
        var timer = Stopwatch.StartNew();
        while (true)
        {
            if (workers!.Exited() is { } exited) throw new UsageException($"--workers {n}: {exited}");
            IReadOnlyList<string> active = Array.Empty<string>();
            try { active = Active(); }
            catch (Exception e) when (e is OrleansException or TimeoutException) { }
            if (active.Count >= n) return active;
            if (timer.Elapsed > wait) throw new UsageException($"--workers {n}: only {active.Count} of {n} workers joined within {wait.TotalSeconds:F0} s");
            Thread.Sleep(300);
        }
    }

    /// One line for the run's header.
    public string Describe() =>
        Layers is { } layers ? (request.Workers is { } w ? $"layer-parallel, {layers.Segments} segments on {w} local workers (localhost clustering '{workers!.ClusterId}', pids {string.Join(" ", workers.ProcessIds)}); cluster.json in the run folder"
            : request.Cluster is { } cl ? $"layer-parallel, {layers.Segments} segments on the {silos.Count} workers of {cl} (cluster '{request.ClusterId}'{(request.Tls is null ? "" : ", TLS")}); cluster.json in the run folder"
            : $"layer-parallel, {layers.Segments} segments in this process (threads, no network); cluster.json in the run folder")
        : request.Workers is { } n ? $"data-parallel, {Run!.Replicas} replicas on {n} local workers (localhost clustering '{workers!.ClusterId}', pids {string.Join(" ", workers.ProcessIds)}); cluster.json in the run folder"
        : request.Cluster is { } c ? $"data-parallel, {Run!.Replicas} replicas on the {silos.Count} workers of {c} (cluster '{request.ClusterId}'{(request.Tls is null ? "" : ", TLS")}); cluster.json in the run folder"
        : $"data-parallel, {Run!.Replicas} replicas in this process (no network); cluster.json in the run folder";

    /// The run folder exists (the trainer lifted the problem and the replicas joined).
    public void Started(RunFolder runFolder)
    {
        lock (gate) folder = runFolder;
        Write(final: false);
    }

    public void Ended()
    {
        Write(final: true);
        lock (gate) ended = true;
    }

    private void Write(bool final)
    {
        lock (gate)
        {
            if (folder is null || ended) return;
            if (Layers is { } layers)
            {
                WriteLayers(layers, final);
                return;
            }
            var run = Run!;
            var o = new JsonObject
            {
                ["mode"] = "data-parallel, synchronous",
                ["transport"] = request.Workers is not null ? "orleans, localhost clustering" : request.Cluster is not null ? $"orleans, {request.Cluster}" : "in-process replicas (no network)",
                ["cluster_id"] = workers?.ClusterId ?? (request.Cluster is not null ? request.ClusterId : null),
                ["tls"] = request.Tls is not null,
                ["workers_started"] = request.Workers,
                ["worker_pids"] = workers is null ? null : new JsonArray(workers.ProcessIds.Select(p => (JsonNode)JsonValue.Create(p)).ToArray()),
                ["silos_at_start"] = new JsonArray(silos.Select(s => (JsonNode)JsonValue.Create(s)).ToArray()),
                ["replicas"] = run.Replicas,
                ["combination"] = "sum over replicas k in order of (b_k / B) * d_k, d_k the mean direction of replica k's shard (the k-th contiguous slice of the mini-batch)",
            };
            if (run.Plan is { } plan)
                o["plan"] = new JsonObject
                {
                    ["coordinator_players"] = new JsonArray(plan.SharedPlayers.Select(p => (JsonNode)JsonValue.Create(p)).ToArray()),
                    ["coordinator_solver"] = plan.CoordinatorSolver.Name,
                    ["replica_inner_solve"] = plan.Inner is { } inner ? $"{inner.Inner.Name} on {string.Join("+", inner.InnerPlayers)}, {inner.MaxIterations} iterations" : null,
                };
            o["layout"] = new JsonArray(run.Layout.Where(p => p is not null).Select(p => (JsonNode)new JsonObject
            {
                ["replica"] = p!.Replica, ["silo"] = p.Silo, ["host"] = p.Host, ["pid"] = p.ProcessId, ["threads"] = p.Threads,
            }).ToArray());
            o["events"] = new JsonArray(run.Events.Select(e => (JsonNode)new JsonObject
            {
                ["time"] = e.Time.ToString("O", CultureInfo.InvariantCulture), ["epoch"] = e.Epoch, ["step"] = e.Step, ["text"] = e.Text,
            }).ToArray());
            long steps = Math.Max(1, run.Steps);
            o["traffic"] = new JsonObject
            {
                ["steps"] = run.Steps,
                ["operator_evaluations"] = run.Evaluations,
                ["bytes_sent"] = run.BytesSent,
                ["bytes_received"] = run.BytesReceived,
                ["bytes_sent_per_step"] = run.BytesSent / steps,
                ["bytes_received_per_step"] = run.BytesReceived / steps,
                ["note"] = "message payloads (batch indices, shared values and directions in the safetensors layout), all replicas together; without Orleans' framing",
            };
            o["final"] = final;
            try { folder.WriteJson(File, o); }
            catch (IOException) { /* the next change writes it again */ }
        }
    }

    /// cluster.json of a layer-parallel run: the split, where each segment runs, what it sends.
    private void WriteLayers(LayerParallelRun layers, bool final)
    {
        JsonArray Array<T>(IEnumerable<T> values) => new(values.Select(v => JsonValue.Create(v) as JsonNode).ToArray());
        var o = new JsonObject
        {
            ["mode"] = "layer-parallel, synchronous",
            ["transport"] = request.Workers is not null ? "orleans, localhost clustering" : request.Cluster is not null ? $"orleans, {request.Cluster}" : "in-process segments (threads, no network)",
            ["cluster_id"] = workers?.ClusterId ?? (request.Cluster is not null ? request.ClusterId : null),
            ["tls"] = request.Tls is not null,
            ["workers_started"] = request.Workers,
            ["worker_pids"] = workers is null ? null : Array(workers.ProcessIds),
            ["silos_at_start"] = Array(silos),
            ["segments"] = layers.Segments,
        };
        if (layers.Plan is { } plan)
            o["plan"] = new JsonObject
            {
                ["blocks"] = Array(plan.Ranges.Select(r => r.ToString())),
                ["cost_model_multiply_adds_per_batch"] = Array(plan.Costs),
                ["exchange"] = plan.Exchanges,
            };
        o["layout"] = new JsonArray(layers.Layout.Where(p => p is not null).Select(p => (JsonNode)new JsonObject
        {
            ["segment"] = p!.Replica, ["silo"] = p.Silo, ["host"] = p.Host, ["pid"] = p.ProcessId, ["threads"] = p.Threads,
        }).ToArray());
        o["events"] = new JsonArray(layers.Events.Select(e => (JsonNode)new JsonObject
        {
            ["time"] = e.Time.ToString("O", CultureInfo.InvariantCulture), ["epoch"] = e.Epoch, ["step"] = e.Step, ["text"] = e.Text,
        }).ToArray());
        long steps = Math.Max(1, layers.Steps);
        o["traffic"] = new JsonObject
        {
            ["steps"] = layers.Steps,
            ["bytes_to_segments_per_step"] = layers.BytesToSegments / steps,
            ["bytes_between_segments_per_step"] = layers.BytesBetweenSegments / steps,
            ["bytes_sent_per_step_by_segment"] = Array(layers.SegmentBytes.Select(b => b / steps)),
            ["step_seconds_by_segment"] = Array(layers.SegmentSeconds),
            ["exchange_wait_seconds_by_segment"] = Array(layers.SegmentWaitSeconds),
            ["bytes_of_state"] = layers.BytesOfState,
            ["note"] = "message payloads: batch indices from the coordinator, gradient parts between segments (safetensors layout), whole-state pushes and pulls (start, epochs' ends, checkpoints); without Orleans' framing",
        };
        o["final"] = final;
        try { folder!.WriteJson(File, o); }
        catch (IOException) { /* the next change writes it again */ }
    }

    public void Dispose()
    {
        try { Run?.Leave(); } catch (Exception) { }
        Run?.Dispose();
        try { Layers?.Leave(); } catch (Exception) { }
        Layers?.Dispose();
        if (client is not null)
        {
            try { client.StopAsync().Wait(TimeSpan.FromSeconds(10)); } catch (Exception) { }
            client.Dispose();
        }
        workers?.Dispose();
    }
}

/// `lifting worker`: a silo that hosts replicas of data-parallel runs until it is stopped.
internal static class WorkerCommand
{
    public static Command Create(CliContext context)
    {
        var command = new Command("worker", "Run a worker (an Orleans silo) for data-parallel training: lifting train --cluster redis://HOST:PORT uses it (docs/distributed.md). Runs until Ctrl-C or SIGTERM.");
        var cluster = new Option<string>("--cluster") { Description = "join the cluster whose membership is in Redis [default: localhost clustering, one machine]", HelpName = "redis://HOST:PORT" };
        var clusterId = new Option<string>("--cluster-id") { Description = "the cluster's name [default: lifting]", HelpName = "ID" };
        var siloPort = new Option<string>("--silo-port") { Description = "the port silos talk on [default: 11111]", HelpName = "PORT" };
        var gatewayPort = new Option<string>("--gateway-port") { Description = "the port coordinators connect to [default: 30000]", HelpName = "PORT" };
        var primary = new Option<string>("--primary") { Description = "localhost clustering: the silo port of the first worker (which holds the membership); none = this is the first", HelpName = "PORT" };
        var endpoint = new Option<string>("--endpoint") { Description = "the address to listen on [default: 127.0.0.1]; any other than loopback needs --tls-cert and --cluster", HelpName = "ADDRESS" };
        var tlsCert = new Option<string>("--tls-cert") { Description = "the cluster's PKCS#12 certificate: TLS on every connection", HelpName = "FILE" };
        var tlsPassword = new Option<string>("--tls-password") { Description = "the password of --tls-cert", HelpName = "PASSWORD" };
        var threads = new Option<string>("--threads") { Description = "LibTorch threads of this worker [default: 1]", HelpName = "N" };
        var parent = new Option<string>("--parent") { Description = "exit when the process with this id ends (train --workers sets it)", HelpName = "PID", Hidden = true };
        foreach (var o in new Option[] { cluster, clusterId, siloPort, gatewayPort, primary, endpoint, tlsCert, tlsPassword, threads, parent }) command.Add(o);
        command.SetAction(parsed =>
        {
            int Int(Option<string> o, string flag, int fallback, int min, int max)
            {
                if (parsed.GetValue(o) is not { } text) return fallback;
                return int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) && v >= min && v <= max ? v
                    : throw new UsageException($"{flag}: '{text}' must be an integer from {min} to {max}");
            }
            WorkerSettings settings;
            try
            {
                IPAddress address = IPAddress.Loopback;
                if (parsed.GetValue(endpoint) is { } e && !IPAddress.TryParse(e, out address!))
                    throw new UsageException($"--endpoint {e}: not an IP address");
                settings = new WorkerSettings
                {
                    Cluster = parsed.GetValue(cluster) is { } c ? ClusterAddress.Parse(c) : ClusterAddress.Localhost,
                    ClusterId = parsed.GetValue(clusterId) ?? "lifting",
                    SiloPort = Int(siloPort, "--silo-port", 11111, 1, 65535),
                    GatewayPort = Int(gatewayPort, "--gateway-port", 30000, 1, 65535),
                    PrimarySiloPort = parsed.GetValue(primary) is null ? null : Int(primary, "--primary", 0, 1, 65535),
                    Endpoint = address,
                    Tls = parsed.GetValue(tlsCert) is { } cert ? ClusterTls.Load(cert, parsed.GetValue(tlsPassword)) : null,
                };
                settings.Validate();
            }
            catch (ArgumentException x) { throw new UsageException(x.Message); }
            Threads.Set(Int(threads, "--threads", 1, 1, 1024));
            var parentId = parsed.GetValue(parent) is null ? (int?)null : Int(parent, "--parent", 0, 1, int.MaxValue);
            using var host = ClusterHosting.Worker(settings, new HostJobFactory());
            try { host.StartAsync(context.Cancellation).GetAwaiter().GetResult(); }
            catch (Exception x) when (x is not OutOfMemoryException)
            {
                throw new UsageException($"worker: the silo did not start ({x.GetType().Name}: {Cli.OneLine(x.Message)})");
            }
            context.Output.WriteLine($"lifting worker: silo {settings.Endpoint}:{settings.SiloPort}, gateway {settings.GatewayPort}, cluster '{settings.ClusterId}' ({settings.Cluster}), " +
                                     $"{Threads.Count} thread{(Threads.Count == 1 ? "" : "s")}, TLS {(settings.Tls is null ? "off" : "on")}, pid {Environment.ProcessId}, build {HostJobFactory.Build}");
            context.Output.Flush();
            while (!context.Cancellation.IsCancellationRequested)
            {
                if (parentId is { } pid && !Alive(pid)) break;
                context.Cancellation.WaitHandle.WaitOne(1000);
            }
            try { host.StopAsync(TimeSpan.FromSeconds(10)).GetAwaiter().GetResult(); } catch (Exception) { }
            context.Output.WriteLine("lifting worker: stopped");
            return 0;
        });
        return command;
    }

    private static bool Alive(int pid)
    {
        try
        {
            using var p = Process.GetProcessById(pid);
            return !p.HasExited;
        }
        catch (ArgumentException) { return false; }
    }
}
