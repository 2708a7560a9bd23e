using TorchSharp;
using static TorchSharp.torch;

namespace Lifting;

/// Which device tensors live on. `Auto` means CUDA when LibTorch reports it available, else CPU.
public enum DeviceChoice { Auto, Cpu, Cuda }

/// Device selection. Nothing in Lifting assumes CPU: every tensor is created on the device chosen
/// here. CUDA needs the TorchSharp CUDA runtime package in place of TorchSharp-cpu (README, "GPU").
public static class Devices
{
    public static DeviceChoice Parse(string name) => name.Trim().ToLowerInvariant() switch
    {
        "auto" => DeviceChoice.Auto,
        "cpu" => DeviceChoice.Cpu,
        "cuda" or "gpu" => DeviceChoice.Cuda,
        _ => throw new ArgumentException($"Unknown device '{name}' (expected auto, cpu or cuda)."),
    };

    public static Device Resolve(DeviceChoice choice) => choice switch
    {
        DeviceChoice.Cpu => CPU,
        DeviceChoice.Cuda when cuda.is_available() => CUDA,
        DeviceChoice.Cuda => throw new InvalidOperationException(
            "CUDA was requested but LibTorch reports no CUDA device; this build carries the CPU runtime " +
            "(TorchSharp-cpu). Swap in the CUDA runtime package as the README's \"GPU\" section describes, or use --device cpu."),
        _ => cuda.is_available() ? CUDA : CPU,
    };

    public static Device Resolve(string name) => Resolve(Parse(name));
}

/// The floating-point type of a run's weights, auxiliary variables and data. float32 is the
/// default; float64 resolves changes below float32's relative resolution of about 1e-7, such as the
/// small code steps of alternating minimisation on deep nets (docs/methods.md, LeNet-5), at about
/// twice the cost on CPU (docs/engine.md, "Precision").
public static class Precision
{
    public static ScalarType Parse(string name) => name.Trim().ToLowerInvariant() switch
    {
        "float32" or "single" => ScalarType.Float32,
        "float64" or "double" => ScalarType.Float64,
        _ => throw new ArgumentException($"Unknown dtype '{name}' (expected float32 or float64)."),
    };
}

/// LibTorch's intra-op thread count. Results are bit-identical across processes for a seed and a
/// thread count on one kind of CPU (docs/engine.md): LibTorch's default count follows the cores
/// the process may run on, so a run that must be repeated sets it.
public static class Threads
{
    public static int Count => torch.get_num_threads();

    public static void Set(int count)
    {
        if (count < 1) throw new ArgumentOutOfRangeException(nameof(count), $"Invalid thread count: {count} (expected >= 1).");
        VectorMath.Prepare(); // before any split call (see VectorMath)
        torch.set_num_threads(count);
    }

    /// Runs `body(0)` … `body(count − 1)` concurrently: `body(0)` on the calling thread, the others
    /// on new threads, each at the caller's intra-op thread count (a run at `--threads 1` that split
    /// its reductions differently on the new threads would lose bit identity with the sequential
    /// order). LibTorch 2.10 applies its process-wide count to a new thread itself, at the
    /// thread's first parallel call (measured: a fresh thread after `set_num_threads(1)` reports 1);
    /// the count is set here too so that this holds whatever the build does. Returns when every
    /// body has ended; rethrows a single failure as it was, several as an `AggregateException`
    /// with `what` in its message.
    public static void RunConcurrently(int count, Action<int> body, string what)
    {
        int intraOp = Count;
        var errors = new Exception?[count];
        void Run(int i)
        {
            try
            {
                torch.set_num_threads(intraOp);
                body(i);
            }
            catch (Exception e) { errors[i] = e; }
        }
        var threads = Enumerable.Range(1, Math.Max(0, count - 1)).Select(i => new Thread(() => Run(i))).ToArray();
        foreach (var t in threads) t.Start();
        if (count > 0) Run(0);
        foreach (var t in threads) t.Join();
        var failed = errors.OfType<Exception>().ToArray();
        if (failed.Length == 1) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(failed[0]).Throw();
        if (failed.Length > 1) throw new AggregateException($"{what} failed on several threads.", failed);
    }
}

/// LibTorch's CPU build computes float functions such as exp, log, sqrt and tanh with MKL's vector
/// math library, which chooses its kernels the first time one of them runs in the process. When
/// that first call is split between LibTorch's threads (more than 2,048 elements), the threads
/// can race through the choice, and one of them then computes with relative errors up to about
/// 6e-5 for the rest of the process. Measured on a 2-core machine (docs/engine.md, "A race in MKL's
/// first vector-math call"): an auglag run on digits ended with other weights (always the same
/// other weights) in 10 of 160 processes, and in 0 of 120 with `Prepare`. Traced, the difference
/// began in the half of an 8,192-element `sqrt` that the second thread computed. `Prepare` makes that first call on 16 elements, which LibTorch
/// never splits. Loading a dataset, training, evaluating and `Threads.Set` call it; a script that
/// calls these functions on large tensors before any of those calls it first itself. Idempotent
/// and cheap.
public static class VectorMath
{
    private static readonly Lazy<bool> prepared = new(() =>
    {
        using var scope = NewDisposeScope();
        foreach (var dtype in new[] { ScalarType.Float32, ScalarType.Float64 })
            ones(16, dtype: dtype).exp();
        return true;
    }, LazyThreadSafetyMode.ExecutionAndPublication);

    public static void Prepare() => _ = prepared.Value;
}

/// What a run computed on: enough to say whether two runs can be bit-identical.
public sealed record EngineInfo(string LibTorch, string TorchSharp, int Threads, string Device, string Cpu, string VectorInstructions)
{
    public static EngineInfo Current(Device device) => new(
        torch.__version__,
        typeof(torch).Assembly.GetName().Version?.ToString(3) ?? "unknown",
        Lifting.Threads.Count,
        device.type.ToString().ToLowerInvariant(),
        CpuModel(),
        VectorSet());

    private static string CpuModel()
    {
        try
        {
            if (File.Exists("/proc/cpuinfo"))
                foreach (var line in File.ReadLines("/proc/cpuinfo"))
                    if (line.StartsWith("model name", StringComparison.Ordinal)) return line[(line.IndexOf(':') + 1)..].Trim();
        }
        catch (IOException) { }
        return System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture.ToString();
    }

    /// The widest x86 vector extension the CPU offers: LibTorch and MKL pick their kernels by it,
    /// so results may differ between CPUs that differ here.
    private static string VectorSet() =>
        System.Runtime.Intrinsics.X86.Avx512F.IsSupported ? "avx512"
        : System.Runtime.Intrinsics.X86.Avx2.IsSupported ? "avx2"
        : System.Runtime.Intrinsics.X86.Avx.IsSupported ? "avx"
        : System.Runtime.Intrinsics.Arm.AdvSimd.IsSupported ? "neon"
        : "baseline";
}

/// Native memory housekeeping.
public static class NativeMemory
{
    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "malloc_trim")]
    private static extern int MallocTrim(UIntPtr pad);

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "mallopt")]
    private static extern int MallOpt(int parameter, int value);

    private const int TrimThresholdParameter = -1, MmapThresholdParameter = -3; // M_TRIM_THRESHOLD, M_MMAP_THRESHOLD

    private static bool unavailable = !OperatingSystem.IsLinux();

    /// The C heap's mmap threshold `Configure` sets: allocations below it come from the heap and
    /// are reused after they are freed; at most 32 MiB on 64-bit glibc (its largest accepted value).
    public const int MmapThreshold = 32 << 20;

    /// The C heap's trim threshold `Configure` sets: free memory at the heap's top is handed back to
    /// the operating system at `free` only above this; the trainer's end-of-epoch
    /// `ReleaseFreePages` hands it back regardless.
    public const int TrimThreshold = 1 << 30;

    private static readonly Lazy<string> configured = new(ConfigureOnce, LazyThreadSafetyMode.ExecutionAndPublication);

    /// What `Configure` did: "mmap 32 MiB, trim 1024 MiB", or why it left glibc's defaults.
    public static string HeapConfiguration => configured.Value;

    /// Sets the C heap's mmap and trim thresholds once for the process (glibc `mallopt`), unless
    /// the environment sets them already (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_,
    /// GLIBC_TUNABLES) or LIFTING_HEAP=default asks for glibc's defaults. Why: glibc's default
    /// mmap threshold starts at 128 KiB and its trim threshold follows it, so a training step's
    /// W-sized temporaries are mapped and unmapped, or the heap's top is returned and refaulted,
    /// at every step: a backprop epoch on Fashion-MNIST took 40–130 K minor page faults against
    /// 1–3 K for a plain TorchSharp loop (issue 26). With the thresholds raised, freed blocks are
    /// reused; `ReleaseFreePages` still returns the free pages once per epoch, so the resident
    /// size stays bounded by one epoch's peak (docs/engine.md, "Memory discipline", measured).
    /// The trainer calls this; idempotent; a no-op off Linux/glibc.
    public static void Configure() => _ = configured.Value;

    private static string ConfigureOnce()
    {
        if (unavailable) return "default (not Linux)";
        if (Environment.GetEnvironmentVariable("LIFTING_HEAP") is "default") return "default (LIFTING_HEAP=default)";
        foreach (var name in new[] { "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES" })
            if (!string.IsNullOrEmpty(Environment.GetEnvironmentVariable(name))) return $"default (the environment sets {name})";
        try
        {
            bool ok = MallOpt(MmapThresholdParameter, MmapThreshold) == 1 && MallOpt(TrimThresholdParameter, TrimThreshold) == 1;
            return ok ? $"mmap {MmapThreshold >> 20} MiB, trim {TrimThreshold >> 20} MiB" : "default (mallopt refused)";
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return "default (no glibc mallopt)"; }
    }

    [System.Runtime.InteropServices.StructLayout(System.Runtime.InteropServices.LayoutKind.Sequential)]
    private struct MallInfo2
    {
        public UIntPtr Arena, OrdinaryBlocks, SmallBlocks, MappedBlocks, MappedBytes, MaxAllocated, FastFreeBytes, AllocatedBytes, FreeBytes, TopReleasable;
    }

    [System.Runtime.InteropServices.DllImport("libc", EntryPoint = "mallinfo2")]
    private static extern MallInfo2 MallInfo();

    /// Whether the last trim handed memory back to the operating system (`malloc_trim`'s result:
    /// pages at the heap's top returned, or free pages inside it released with madvise, which
    /// `FreeHeapBytes` does not see: those bytes stay free in the heap, only unbacked).
    public static bool LastTrimReleased { get; private set; }

    /// `ReleaseFreePages` trims only when the C heap holds more free bytes than this.
    public const long FreeBytesBeforeTrim = 64L << 20;

    /// The C heap's free bytes (glibc `mallinfo2`, all arenas), or -1 where unknown.
    public static long FreeHeapBytes()
    {
        if (unavailable) return -1;
        try { return (long)MallInfo().FreeBytes; }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return -1; }
    }

    /// Whether a heap holding `freeBytes` free (−1: unknown) is trimmed: above `FreeBytesBeforeTrim`,
    /// or when unknown.
    public static bool WorthTrimming(long freeBytes) => freeBytes < 0 || freeBytes > FreeBytesBeforeTrim;

    /// Returns the C heap's free pages to the operating system (glibc `malloc_trim`) when it holds
    /// more than `FreeBytesBeforeTrim` free bytes (or always, where that is unknown). LibTorch's
    /// CPU tensors come from the C heap; when training steps and evaluations of different sizes
    /// interleave, glibc's heap keeps growing with free but unreturned pages (measured on
    /// MNIST-10k: about 250 MB per epoch, docs/engine.md). A heap holding less than that is left
    /// alone: trimming it every epoch handed back the step's working set, which the next epoch
    /// faulted in again (about 850 minor faults per backprop epoch on Fashion-MNIST 784-256-10
    /// against 26 for a plain TorchSharp loop). The trainer calls this once per epoch; it takes a
    /// few milliseconds. A no-op off Linux or without glibc. Returns whether it trimmed.
    public static bool ReleaseFreePages()
    {
        if (unavailable) return false;
        if (!WorthTrimming(FreeHeapBytes())) return false;
        try { LastTrimReleased = MallocTrim(UIntPtr.Zero) == 1; return true; }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { unavailable = true; return false; }
    }
}
