using System.CommandLine;
using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;

namespace Lifting.Host;

/// `lifting compare RUN...` (a Markdown table and overlaid curves) and `lifting plot RUN...`
/// (a run's own plots, redrawn from its metrics).
public static class CompareCommand
{
    public static Command Compare(CliContext context)
    {
        var command = new Command("compare", "Compare run folders: a Markdown table (accuracy at the validation-selected epoch, defect, s/epoch and its ratio to the first run) and overlaid PNG curves.");
        var runs = new Argument<string[]>("RUN") { Description = "run folders", Arity = ArgumentArity.OneOrMore };
        var output = new Option<string>("--out") { Description = "folder for comparison.md, comparison.json and the PNG curves (default runs/DATE-TIME-compare)", HelpName = "DIR" };
        var force = new Option<bool>("--force") { Description = "replace the contents of a non-empty --out folder" };
        command.Add(runs);
        command.Add(output);
        command.Add(force);
        command.SetAction(parsed =>
        {
            var folders = parsed.GetValue(runs)!.Select(RunFolder.Existing).ToArray();
            using var target = RunFolder.ForOutput(parsed.GetValue(output), parsed.GetValue(force), "compare");
            var rows = folders.Select(Row).ToArray();
            var reference = rows[0].SecondsPerEpoch;
            var markdown = new StringBuilder();
            markdown.AppendLine("| run | method | status | epochs | selected epoch | validation acc. | test acc. (selected) | defect | s/epoch | × first |");
            markdown.AppendLine("|---|---|---|---|---|---|---|---|---|---|");
            foreach (var r in rows)
                markdown.AppendLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {r.Name} | {r.Method} | {r.Status} | {r.Epochs} | {r.Selected} | {Show(r.Validation)} | {Show(r.Test)} | {(r.Defect is { } d ? Cli.Sci(d) : "–")} | {Show(r.SecondsPerEpoch, "F3")} | {Show(r.SecondsPerEpoch / reference, "F2")} |"));
            context.Output.Write(markdown.ToString());
            target.Create();
            target.WriteText("comparison.md", markdown.ToString());
            target.WriteJson("comparison.json", new JsonArray(rows.Select(r => (JsonNode)new JsonObject
            {
                ["run"] = r.Path, ["method"] = r.Method, ["status"] = r.Status, ["epochs"] = r.Epochs, ["selected_epoch"] = r.Selected,
                ["validation_accuracy"] = r.Validation, ["test_accuracy"] = r.Test, ["defect"] = r.Defect,
                ["seconds_per_epoch"] = r.SecondsPerEpoch, ["ratio_to_first"] = r.SecondsPerEpoch / reference,
            }).ToArray()));
            var plots = Plots.Overlay(target.Path, folders.Select(f => (Label(f, folders), f.ReadMetrics())).ToArray());
            context.Output.WriteLine($"comparison and {plots.Count} plots in {target.Path}");
            return 0;
        });
        return command;
    }

    public static Command Plot(CliContext context)
    {
        var command = new Command("plot", "Redraw the plots of run folders (RUN/plots/*.png) from their metrics.jsonl.");
        var runs = new Argument<string[]>("RUN") { Description = "run folders", Arity = ArgumentArity.OneOrMore };
        command.Add(runs);
        command.SetAction(parsed =>
        {
            foreach (var folder in parsed.GetValue(runs)!.Select(RunFolder.Existing).ToArray())
            {
                if (folder.ReadMetrics().Count == 0) throw new UsageException($"{folder.Path}: no epoch in metrics.jsonl; nothing to plot");
                foreach (var file in Plots.ForRun(folder)) context.Output.WriteLine(file);
            }
            return 0;
        });
        return command;
    }

    private sealed record RunRow(string Path, string Name, string Method, string Status, int Epochs, int? Selected, double? Validation, double? Test, double? Defect, double SecondsPerEpoch);

    private static RunRow Row(RunFolder folder)
    {
        var summary = folder.ReadJson(RunFolder.Summary);
        var config = folder.ReadJson(RunFolder.Config);
        double seconds = double.NaN;
        if (File.Exists(folder.File(RunFolder.Timing)) && folder.ReadJson(RunFolder.Timing)["seconds_per_epoch"] is JsonValue v && v.TryGetValue<double>(out var s)) seconds = s;
        double? D(string key) => summary[key] is JsonValue x && x.TryGetValue<double>(out var d) ? d : null;
        int? I(string key) => summary[key] is JsonValue x && x.TryGetValue<int>(out var i) ? i : null;
        return new RunRow(folder.Path, System.IO.Path.GetFileName(folder.Path), config["method"]?.GetValue<string>() ?? "?", summary["status"]?.GetValue<string>() ?? "?",
            I("epochs") ?? 0, I("selected_epoch"), D("validation_accuracy"), D("test_accuracy"), D("defect"), seconds);
    }

    /// A run's label in overlays: its folder name, with the parent's when names repeat.
    private static string Label(RunFolder folder, RunFolder[] all)
    {
        var name = Path.GetFileName(folder.Path);
        return all.Count(f => Path.GetFileName(f.Path) == name) > 1 ? Path.Combine(Path.GetFileName(Path.GetDirectoryName(folder.Path)!), name) : name;
    }

    private static string Show(double? v, string format = "F4") => v is { } d && double.IsFinite(d) ? d.ToString(format, CultureInfo.InvariantCulture) : "–";
}
