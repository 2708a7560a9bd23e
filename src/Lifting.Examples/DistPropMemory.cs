using System.Globalization;
using System.Text;
using Lifting.Data;
using Lifting.Formulations;
using Lifting.Programs;
using static TorchSharp.torch;

namespace Lifting.Examples;

/// The auxiliary state each formulation keeps for a run (`ILiftedProblem.StateBytes`: the
/// per-example store with its step-rule state, plus shared variables such as DistProp's Gaussians,
/// fixed variates and per-class multipliers), against the training set's size: MNIST-10k subsets of
/// N = 1,000, 4,000 and 8,000 examples (the whole 8,000 without a validation split) and the 60,000 of
/// Fashion-MNIST, on seed 001's conv net (DistProp on seed001-conv-distprop, the same function with
/// its states before the cut's ReLU). Nothing is trained: the state is allocated when the problem is
/// lifted, at the methods' default settings.
///
///   distprop-memory [out=docs/results/distprop-memory.md]
public static class DistPropMemory
{
    private static readonly (string Label, MethodSettings Method, string Net)[] Rows =
    {
        ("ExtraProp (per-example states and multipliers)", new MethodSettings("extraprop"), "seed001-conv"),
        ("DistProp, multipliers per class (Algorithm 1)", new MethodSettings("distprop-seed001").With("multipliers", "class"), "seed001-conv-distprop"),
        ("DistProp, multipliers per example", new MethodSettings("distprop-seed001").With("multipliers", "example"), "seed001-conv-distprop"),
        ("DistProp, reduced constraint, one multiplier per example (§5)", new MethodSettings("distprop-reduced"), "seed001-conv-distprop"),
    };

    public static int Run(Settings settings)
    {
        var output = settings.Text("out", "docs/results/distprop-memory.md");
        var sizes = new List<(string Name, Dataset Train)>();
        using var mnist = DatasetCatalog.Load("mnist-10k", new DataOptions { ValidationFraction = 0 });
        using var fashion = DatasetCatalog.Load("fashion-mnist", new DataOptions { ValidationFraction = 0 });
        var subsets = new[] { 1000, 4000, 8000 }.Select(n => new Dataset($"mnist-10k[:{n}]",
            mnist.Train.Inputs.narrow(0, 0, n).clone(), mnist.Train.Labels.narrow(0, 0, n).clone(), mnist.Train.ClassCount)).ToList();
        var datasets = subsets.Select(d => (d.Name, d)).Append(("fashion-mnist", fashion.Train)).ToArray();

        var md = new StringBuilder();
        md.AppendLine("| formulation (defaults) | network | " + string.Join(" | ", datasets.Select(d => $"N = {d.Item2.Count:N0}")) + " | bytes per example (store) |");
        md.AppendLine("|---|---|" + string.Concat(datasets.Select(_ => "---|")) + "---|");
        foreach (var (label, settingsOfRow, net) in Rows)
        {
            var cells = new List<string>();
            long perExample = 0;
            foreach (var (_, train) in datasets)
            {
                var method = Methods.Resolve(settingsOfRow);
                var program = NetSpec.Build(net, train.ExampleShape, train.ClassCount, Activations.ReLU, Losses.CrossEntropy);
                using var weights = program.Initialise(0);
                using var problem = method.Formulation.Lift(new LiftContext(program, train, CPU, ScalarType.Float32, 0, method.StepRules, method.Solver.MemorySlots), weights);
                cells.Add(Bytes(problem.StateBytes));
                perExample = problem.Store.Bytes / train.Count;
                Console.WriteLine($"{label}, N = {train.Count}: state {problem.StateBytes} B, store {problem.Store.Bytes} B");
            }
            md.AppendLine($"| {label} | {net} | {string.Join(" | ", cells)} | {perExample:N0} |");
        }
        foreach (var d in subsets) d.Dispose();
        Console.WriteLine(md.ToString());
        var header = "<!-- produced by: dotnet run --project src/Lifting.Examples -c Release -- distprop-memory -->\n" +
                     "Auxiliary state kept for the run (`StateBytes`: per-example store with its step-rule state, plus shared variables; float32), " +
                     "allocated at lifting with each method's default step rules. The network's weights and their optimiser state are not counted.\n\n";
        DistPropTable.Write(output, header + md);
        return 0;
    }

    private static string Bytes(long b) => b >= 1 << 20
        ? string.Create(CultureInfo.InvariantCulture, $"{b / 1048576.0:F1} MiB ({b:N0} B)")
        : string.Create(CultureInfo.InvariantCulture, $"{b / 1024.0:F1} KiB ({b:N0} B)");
}
