using System.Globalization;
using Lifting.Formulations;
using Lifting.Programs;

namespace Lifting.Training;

/// A lower bound on the memory a training run allocates, computed from shapes alone, so that a
/// program that cannot fit is refused before any tensor exists (LibTorch answers an allocation it
/// cannot serve with a crash, not an exception):
///
///   weights: P parameters × 4 tensors (values, gradient, two moments of Adam);
///   per-example state: N training examples × Σ_{l<L} |h_l| per lifted player beyond the weights;
///   one mini-batch's activations: B × Σ_layers |output| × 2 (forward values and gradients);
///   evaluation: 1000 examples × the widest layer output;
///
/// all in 4-byte floats.
public sealed record MemoryEstimate(long Parameters, long WeightBytes, long PerExampleBytes, long ActivationBytes)
{
    public long TotalBytes => WeightBytes + PerExampleBytes + ActivationBytes;

    public static MemoryEstimate Of(NestedProgram program, int trainingExamples, int batchSize, IFormulation formulation, int elementSize = 4)
    {
        // Sizes in double: a program the size of a typo overflows long arithmetic.
        double parameters = program.ParameterSpecs.Sum(s => Size(s.Shape));
        var outputs = program.Nodes.Select(n => Size(n.OutputShape)).ToArray();
        double hidden = program.Segments.Take(program.Segments.Count - 1).Sum(s => Size(s.OutputShape));
        int liftedPlayers = Math.Max(0, formulation.PlayerNames.Count - 1);
        double weights = parameters * 4 * elementSize;
        double perExample = (double)trainingExamples * hidden * liftedPlayers * elementSize;
        double activations = (batchSize * outputs.Sum() * 2 + 1000 * (outputs.Length == 0 ? 0 : outputs.Max())) * elementSize;
        return new MemoryEstimate(Clamp(parameters), Clamp(weights), Clamp(perExample), Clamp(activations));
    }

    private static double Size(long[] shape) => shape.Aggregate(1.0, (a, b) => a * b);

    private static long Clamp(double v) => v >= long.MaxValue / 4 ? long.MaxValue / 4 : (long)v;

    /// The memory this process may still take: the kernel's MemAvailable where readable, else the
    /// runtime's view of the machine's memory.
    public static long AvailableBytes()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/meminfo"))
                if (line.StartsWith("MemAvailable:", StringComparison.Ordinal))
                    return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
    }

    public static string Show(long bytes) => bytes switch
    {
        >= 1L << 30 => string.Create(CultureInfo.InvariantCulture, $"{bytes / (double)(1L << 30):F1} GiB"),
        >= 1L << 20 => string.Create(CultureInfo.InvariantCulture, $"{bytes / (double)(1L << 20):F1} MiB"),
        _ => string.Create(CultureInfo.InvariantCulture, $"{bytes / 1024.0:F1} KiB"),
    };
}
