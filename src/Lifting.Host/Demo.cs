using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;

namespace Lifting.Host;

/// `lifting demo`, README command 1: backprop and one lifted method of each family in the method
/// catalog (`Methods.Representatives`: a family's method marked representative, else its first),
/// side by side on the embedded digits, three seeds each in interleaved rounds, one LibTorch
/// thread: a results table (test accuracy at the validation-selected epoch, defect, s/epoch and
/// its ratio to backprop in the same round) and overlaid plots in a run folder. It is a sweep
/// (`Sweep`) over the methods and seeds, so a family added to the catalog joins it unchanged.
public static class Demo
{
    /// The settings: a 3-block MLP on the 8×8 digits, short enough for about two minutes on two cores.
    public static JsonObject Base(int epochs) => new()
    {
        ["data"] = "digits",
        ["net"] = "64-64-64-10",
        ["epochs"] = epochs,
        ["batch"] = 64,
        ["threads"] = 1,
    };

    public const int DefaultEpochs = 10;
    public const int DefaultSeeds = 3;

    public static SweepDefinition Definition(int epochs, int seeds) => new(Base(epochs), new (string, IReadOnlyList<JsonNode>)[]
    {
        ("seed", Enumerable.Range(0, seeds).Select(s => (JsonNode)JsonValue.Create(s)).ToArray()),
        ("method", Methods.Representatives.Select(m => (JsonNode)JsonValue.Create(m.Name)).ToArray()),
    });

    public static Command Create(CliContext context)
    {
        var command = new Command("demo", "Backprop and one lifted method of each family side by side on the embedded digits (about 2 minutes): a table and plots in a run folder.");
        var output = new Option<string>("--out") { Description = "the folder (default runs/DATE-TIME-demo)", HelpName = "DIR" };
        var force = new Option<bool>("--force") { Description = "replace the contents of a non-empty --out folder" };
        var epochs = new Option<string>("--epochs") { Description = $"epochs per run [default: {DefaultEpochs}]", HelpName = "N" };
        var seeds = new Option<string>("--seeds") { Description = $"seeds per method (rounds) [default: {DefaultSeeds}]", HelpName = "N" };
        var json = new Option<bool>("--json") { Description = "make the last line of output the results as JSON" };
        var plain = new Option<bool>("--plain") { Description = "plain lines instead of live progress bars" };
        foreach (var o in new Option[] { output, force, epochs, seeds, json, plain }) command.Add(o);
        command.SetAction(parsed =>
        {
            int Positive(Option<string> option, int fallback) => parsed.GetValue(option) is not { } text ? fallback
                : int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) && v > 0 ? v
                : throw new UsageException($"{option.Name}: {text} must be a positive integer");
            var definition = Definition(Positive(epochs, DefaultEpochs), Positive(seeds, DefaultSeeds));
            using var folder = RunFolder.ForOutput(parsed.GetValue(output), parsed.GetValue(force), "demo");
            var families = string.Join(", ", Methods.Representatives.Select(m => $"{m.Name} ({m.Family})"));
            return Sweep.Run(definition, "demo", folder, context, parsed.GetValue(json), parsed.GetValue(plain), title: $"demo: {families} on digits");
        });
        return command;
    }
}
