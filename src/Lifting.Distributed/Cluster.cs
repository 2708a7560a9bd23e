using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Orleans;
using Orleans.Configuration;
using Orleans.Connections.Security;
using Orleans.Hosting;
using Orleans.Runtime;

namespace Lifting.Distributed;

/// Where a cluster's membership lives: the development (localhost) clustering, whose table the
/// first silo holds in memory, or a Redis server (`redis://HOST:PORT`).
public sealed record ClusterAddress(string? Redis)
{
    public static ClusterAddress Localhost { get; } = new((string?)null);

    public bool IsRedis => Redis is not null;

    /// `redis://HOST:PORT` (or HOST:PORT); anything else is refused in one line.
    public static ClusterAddress Parse(string text)
    {
        var t = text.Trim();
        if (t.StartsWith("redis://", StringComparison.OrdinalIgnoreCase)) t = t[8..];
        else throw new ArgumentException($"--cluster {text}: give redis://HOST:PORT (a Redis server holding the cluster's membership)");
        t = t.TrimEnd('/');
        var colon = t.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(t[(colon + 1)..], out var port) || port is < 1 or > 65535)
            throw new ArgumentException($"--cluster {text}: give redis://HOST:PORT (the port is missing or not a port number)");
        return new ClusterAddress(t);
    }

    public override string ToString() => Redis is null ? "localhost clustering" : $"redis://{Redis}";
}

/// TLS for silo-to-silo and client-to-silo connections: one certificate (PKCS#12) shared by the
/// cluster; a peer is accepted when it presents the same certificate.
public sealed record ClusterTls(X509Certificate2 Certificate)
{
    public static ClusterTls Load(string file, string? password)
    {
        if (!File.Exists(file)) throw new ArgumentException($"--tls-cert {file}: file not found");
        try
        {
            var cert = X509CertificateLoader.LoadPkcs12FromFile(file, password);
            if (!cert.HasPrivateKey) throw new ArgumentException($"--tls-cert {file}: the certificate has no private key (give a PKCS#12 file with its key)");
            return new ClusterTls(cert);
        }
        catch (CryptographicException x) { throw new ArgumentException($"--tls-cert {file}: not a PKCS#12 certificate or wrong --tls-password ({x.Message.ReplaceLineEndings(" ").Trim()})"); }
    }

    internal void Apply(TlsOptions o)
    {
        o.LocalCertificate = Certificate;
        o.RemoteCertificateMode = RemoteCertificateMode.RequireCertificate;
        o.ClientCertificateMode = RemoteCertificateMode.RequireCertificate;
        var thumbprint = Certificate.Thumbprint;
        // One cluster certificate: the peer must present it (self-signed certificates fail the
        // chain check, which is not what identifies a member here).
        o.RemoteCertificateValidation = (certificate, _, _) => certificate?.Thumbprint == thumbprint;
    }
}

/// A worker: an Orleans silo hosting replica grains.
public sealed record WorkerSettings
{
    public ClusterAddress Cluster { get; init; } = ClusterAddress.Localhost;
    public string ClusterId { get; init; } = "lifting";
    public int SiloPort { get; init; } = 11111;
    public int GatewayPort { get; init; } = 30000;
    /// Localhost clustering: the silo port of the first silo, which holds the membership table
    /// (null: this silo is the first).
    public int? PrimarySiloPort { get; init; }
    /// The address the silo listens on and advertises (loopback unless given).
    public IPAddress Endpoint { get; init; } = IPAddress.Loopback;
    public ClusterTls? Tls { get; init; }

    /// Refuses what would expose an unencrypted silo: any endpoint off loopback needs TLS.
    public void Validate()
    {
        if (!IPAddress.IsLoopback(Endpoint) && Tls is null)
            throw new ArgumentException($"--endpoint {Endpoint}: not a loopback address; a silo reachable from other machines needs --tls-cert FILE (a PKCS#12 certificate the cluster shares)");
        if (!IPAddress.IsLoopback(Endpoint) && !Cluster.IsRedis)
            throw new ArgumentException($"--endpoint {Endpoint}: localhost clustering joins silos of one machine only; give --cluster redis://HOST:PORT for several machines");
        if (PrimarySiloPort is not null && Cluster.IsRedis)
            throw new ArgumentException("--primary: only for localhost clustering (with --cluster redis://… the silos find each other in Redis)");
    }
}

/// Starting silos (workers) and connecting to them (the coordinator).
public static class ClusterHosting
{
    /// Failure detection tuned for small clusters of training workers: a silo that stops
    /// answering is declared dead after about 3 missed probes of 2 s.
    private static void Membership(ClusterMembershipOptions o)
    {
        o.ProbeTimeout = TimeSpan.FromSeconds(2);
        o.NumMissedProbesLimit = 3;
        o.IAmAliveTablePublishTimeout = TimeSpan.FromSeconds(10);
        o.TableRefreshTimeout = TimeSpan.FromSeconds(5);
    }

    public static IHost Worker(WorkerSettings s, IShardJobFactory factory, LogLevel logLevel = LogLevel.Warning)
    {
        s.Validate();
        return new HostBuilder()
            .UseOrleans(silo =>
            {
                if (s.Cluster.Redis is { } redis)
                {
                    silo.UseRedisClustering(o => o.ConfigurationOptions = RedisOptions(redis));
                    silo.ConfigureEndpoints(s.Endpoint, s.SiloPort, s.GatewayPort, listenOnAnyHostAddress: false);
                    silo.Configure<ClusterOptions>(o =>
                    {
                        o.ClusterId = s.ClusterId;
                        o.ServiceId = "lifting";
                    });
                }
                else
                {
                    silo.UseLocalhostClustering(s.SiloPort, s.GatewayPort,
                        s.PrimarySiloPort is { } primary ? new IPEndPoint(IPAddress.Loopback, primary) : null, "lifting", s.ClusterId);
                }
                if (s.Tls is { } tls) silo.UseTls(tls.Certificate, tls.Apply);
                silo.Configure<ClusterMembershipOptions>(Membership);
                silo.Configure<SiloMessagingOptions>(o => o.ResponseTimeout = TimeSpan.FromMinutes(5));
                silo.AddPlacementDirector<ReplicaPlacementStrategy, ReplicaPlacementDirector>();
                silo.ConfigureServices(services => services.AddSingleton(factory));
            })
            .ConfigureLogging(logging => logging.ClearProviders().AddSimpleConsole(o => o.SingleLine = true).SetMinimumLevel(logLevel)
                .AddFilter("Microsoft", LogLevel.Error).AddFilter("Orleans", LogLevel.Error))
            .Build();
    }

    private static StackExchange.Redis.ConfigurationOptions RedisOptions(string redis)
    {
        var o = StackExchange.Redis.ConfigurationOptions.Parse(redis);
        o.ConnectTimeout = 5000;
        o.AbortOnConnectFail = true;
        return o;
    }

    /// A connected client of the cluster, or a one-line `DistributedException` when no silo
    /// answers within `wait` (localhost: `gatewayPorts`; Redis: the silos it lists).
    public static async Task<IHost> ConnectAsync(ClusterAddress cluster, string clusterId, int[] gatewayPorts, ClusterTls? tls, TimeSpan wait)
    {
        var deadline = DateTime.UtcNow + wait;
        var host = new HostBuilder()
            .UseOrleansClient(client =>
            {
                if (cluster.Redis is { } redis)
                {
                    client.UseRedisClustering(o => o.ConfigurationOptions = RedisOptions(redis));
                    client.Configure<ClusterOptions>(o =>
                    {
                        o.ClusterId = clusterId;
                        o.ServiceId = "lifting";
                    });
                }
                else client.UseLocalhostClustering(gatewayPorts, "lifting", clusterId);
                if (tls is not null) client.UseTls(tls.Certificate, tls.Apply);
                client.Configure<ClientMessagingOptions>(o => o.ResponseTimeout = TimeSpan.FromMinutes(5));
                client.Configure<GatewayOptions>(o => o.GatewayListRefreshPeriod = TimeSpan.FromSeconds(5));
                client.UseConnectionRetryFilter(async (_, token) =>
                {
                    if (DateTime.UtcNow > deadline) return false;
                    await Task.Delay(500, token);
                    return true;
                });
            })
            .ConfigureLogging(logging => logging.ClearProviders().AddFilter(_ => false))
            .Build();
        try
        {
            // The retry filter bounds failed connections; a gateway that accepts and then never
            // completes the client's start (seen once in 12 local --workers runs) is bounded here.
            using var cancel = new CancellationTokenSource(wait);
            await host.StartAsync(cancel.Token).WaitAsync(wait + TimeSpan.FromSeconds(5));
            return host;
        }
        catch (Exception e)
        {
            host.Dispose();
            var what = cluster.IsRedis ? $"--cluster {cluster}" : "the local workers";
            throw new DistributedException($"{what}: cannot reach the cluster ({Reason(e)})");
        }
    }

    private static string Reason(Exception e)
    {
        var inner = e is AggregateException { InnerException: { } i } ? i : e;
        return $"{inner.GetType().Name}: {inner.Message.ReplaceLineEndings(" ").Trim()}";
    }

    /// The active silos of the cluster, by address.
    public static async Task<IReadOnlyList<string>> ActiveSilosAsync(IClusterClient client)
    {
        var hosts = await client.GetGrain<IManagementGrain>(0).GetHosts(onlyActive: true);
        return hosts.Keys.OrderBy(s => s).Select(s => s.Endpoint.ToString()).ToArray();
    }

    /// A free TCP port on the loopback interface (bound and released at once).
    public static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }
}

/// The replicas of a run as grains of a cluster.
public sealed class OrleansReplicas : IReplicaSet
{
    private readonly IClusterClient client;
    private readonly string run = Guid.NewGuid().ToString("N")[..12];

    public OrleansReplicas(IClusterClient client, int count)
    {
        this.client = client;
        Count = count;
    }

    public int Count { get; }

    private IReplicaGrain Grain(int k) => client.GetGrain<IReplicaGrain>($"{run}/{k}/{Count}");

    /// The silo each replica last joined on (its `JoinReply`).
    private readonly System.Collections.Concurrent.ConcurrentDictionary<int, string> silos = new();

    /// How often a call in flight checks that its replica's silo is still a member of the cluster.
    public static TimeSpan LivenessPoll { get; set; } = TimeSpan.FromSeconds(1);

    /// How long the membership may stay unreadable (no silo answers) before a call in flight is
    /// given up as lost.
    public static TimeSpan UnreachableLimit { get; set; } = TimeSpan.FromSeconds(5);

    public async Task<JoinReply> JoinAsync(int replica, JoinRequest request)
    {
        var reply = await Watched(Grain(replica).Join(request), null);
        if (!string.IsNullOrEmpty(reply.Silo)) silos[replica] = reply.Silo;
        return reply;
    }

    public Task<ShardReply> EvaluateAsync(int replica, ShardRequest request) =>
        Watched(Grain(replica).Evaluate(request), silos.TryGetValue(replica, out var silo) ? silo : null);

    /// A call without an answer for this long, or for 20 times the slowest of the last answers if
    /// that is longer, is sent again: around a silo's death Orleans can lose a message to a live
    /// silo (the dead one held part of the grain directory), and the call would wait for Orleans'
    /// response timeout (minutes). A replica recomputes a step it is sent again.
    public static TimeSpan StallFloor { get; set; } = TimeSpan.FromSeconds(10);

    private readonly Queue<TimeSpan> recent = new();

    private TimeSpan StallLimit()
    {
        lock (recent)
        {
            var slowest = recent.Count == 0 ? TimeSpan.Zero : recent.Max();
            return slowest * 20 > StallFloor ? slowest * 20 : StallFloor;
        }
    }

    private void Answered(TimeSpan took)
    {
        lock (recent)
        {
            recent.Enqueue(took);
            while (recent.Count > 50) recent.Dequeue();
        }
    }

    /// The call's result, or a transient failure (which the caller retries until its worker
    /// timeout) as soon as the membership declares `silo` dead (any silo: no silo active), cannot
    /// be read for `UnreachableLimit`, or the call stalls (`StallFloor`): Orleans itself fails such a
    /// call only at its response timeout (minutes, so that a long shard is not cut short), and a
    /// killed worker would hold the run that long.
    internal async Task<T> Watched<T>(Task<T> call, string? silo)
    {
        var timer = System.Diagnostics.Stopwatch.StartNew();
        var stall = StallLimit();
        System.Diagnostics.Stopwatch? unreadable = null;
        while (true)
        {
            if (await Task.WhenAny(call, Task.Delay(LivenessPoll)) == call)
            {
                var result = await call;
                Answered(timer.Elapsed);
                return result;
            }
            Exception? lost = null;
            try
            {
                var active = await ClusterHosting.ActiveSilosAsync(client).WaitAsync(UnreachableLimit);
                unreadable = null;
                if (silo is null ? active.Count == 0 : !active.Contains(silo))
                    lost = new SiloUnavailableException(silo is null ? "no silo of the cluster is active" : $"silo {silo} left the cluster");
            }
            catch (Exception e) when (IsTransient(e))
            {
                unreadable ??= System.Diagnostics.Stopwatch.StartNew();
                if (unreadable.Elapsed >= UnreachableLimit) lost = new SiloUnavailableException("no silo of the cluster answers");
            }
            if (lost is null && timer.Elapsed > stall)
                lost = new TimeoutException($"no answer in {timer.Elapsed.TotalSeconds:F0} s from a live silo (a lost message); sending again");
            if (lost is not null)
            {
                // The abandoned call ends at Orleans' response timeout; observe its failure.
                _ = call.ContinueWith(t => _ = t.Exception, TaskContinuationOptions.OnlyOnFaulted);
                throw lost;
            }
        }
    }

    /// Best effort, bounded: a replica whose silo just died may not answer before Orleans' response
    /// timeout, and the run is over either way.
    public Task LeaveAsync(int replica)
    {
        var call = Grain(replica).Leave();
        _ = call.ContinueWith(t => _ = t.Exception, TaskContinuationOptions.OnlyOnFaulted);
        return call.WaitAsync(UnreachableLimit);
    }

    public bool IsTransient(Exception e) => e is OrleansException or TimeoutException or IOException or SocketException or OperationCanceledException
        || e is AggregateException { InnerException: { } i } && IsTransient(i);

    public void Dispose() { }
}
