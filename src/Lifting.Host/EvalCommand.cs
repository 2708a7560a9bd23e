using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Lifting.Data;
using Lifting.Programs;
using Lifting.Storage;
using Lifting.Training;
using static TorchSharp.torch;

namespace Lifting.Host;

/// `lifting eval RUN [--data ...]`: a trained network (its weights file read back by the library)
/// evaluated on its own data or on other data, standardised with the statistics and labelled
/// with the classes it was trained with.
public static class EvalCommand
{
    public static Command Create(CliContext context)
    {
        var command = new Command("eval", "Evaluate a run's weights (selected epoch by default) on its data or on --data: accuracy and loss per split.");
        var runArgument = new Argument<string>("RUN") { Description = "the run folder" };
        var data = new Option<string>("--data") { Description = "data to evaluate on (as for train); default: the run's own", HelpName = "NAME|PATH" };
        var label = new Option<string>("--label") { Description = "CSV: the label column (default: the run's for its own data, else the last column)", HelpName = "NAME|INDEX" };
        var testFraction = new Option<string>("--test-fraction") { Description = "CSV: fraction of the rows in the test split", HelpName = "F" };
        var skipRows = new Option<string>("--skip-rows") { Description = "CSV: lines at the start of the file to skip (default: the run's for its own data, else 0)", HelpName = "N" };
        var noHeader = new Option<bool>("--no-header") { Description = "CSV: the first row is data, not a header (default: the run's for its own data, else detected)" };
        var weights = new Option<string>("--weights") { Description = "selected (the validation-selected epoch, default) or final", HelpName = "selected|final" };
        var json = new Option<bool>("--json") { Description = "print one JSON line" };
        foreach (var o in new Option[] { data, label, testFraction, skipRows, noHeader, weights, json }) command.Add(o);
        command.Add(runArgument);
        command.SetAction(parsed =>
        {
            var folder = RunFolder.Existing(parsed.GetValue(runArgument)!);
            var e = Experiment.FromJsonFile(folder.File(RunFolder.Config));
            if (parsed.GetValue(data) is { } d)
                e = e.Set("data", d, fromFlag: true) with { Label = null, TestFraction = null, SkipRows = 0, NoHeader = false };
            if (parsed.GetValue(label) is { } l) e = e.Set("label", l, fromFlag: true);
            if (parsed.GetValue(skipRows) is { } k) e = e.Set("skip-rows", k, fromFlag: true);
            if (parsed.GetResult(noHeader) is not null) e = e.Set("no-header", parsed.GetValue(noHeader) ? "true" : "false", fromFlag: true);
            if (parsed.GetValue(testFraction) is { } t) e = e.Set("test-fraction", t, fromFlag: true);
            var which = (parsed.GetValue(weights) ?? "selected").Trim().ToLowerInvariant();
            var file = which switch
            {
                "selected" => RunFolder.SelectedWeights,
                "final" => RunFolder.Weights,
                _ => throw new UsageException($"--weights: '{which}' is not selected or final"),
            };
            var path = folder.File(file);
            if (!File.Exists(path))
            {
                var status = File.Exists(folder.File(RunFolder.Summary)) ? folder.ReadJson(RunFolder.Summary)["status"]?.GetValue<string>() : null;
                throw new UsageException(status == RunOutcome.Completed
                    ? $"{folder.Path}: {file} is missing, though the run completed (deleted or moved?)"
                    : $"{folder.Path}: {file} is missing: the run is {status ?? "without a summary"}, and weights are written when a run completes{(status == RunOutcome.Interrupted ? $" (lifting resume {folder.Path})" : "")}");
            }
            IReadOnlyDictionary<string, string> metadata;
            try { metadata = WeightsFile.Metadata(path); }
            catch (DataFormatException x) { throw new UsageException(x.Message); }
            var (normalisation, classNames) = PreparedRun.ReadDataMetadata(metadata, file);
            var inputShape = JsonSerializer.Deserialize<long[]>(metadata["input-shape"])!;
            var classes = int.Parse(metadata["classes"], CultureInfo.InvariantCulture);
            var options = PreparedRun.DataOptions(e, CPU) with { FixedNormalisation = normalisation, ClassNames = classNames.Count > 0 ? classNames : null };
            DataSplit split;
            try { split = DatasetCatalog.Load(e.Data, options); }
            catch (DataFormatException x) { throw new UsageException($"--data {e.Data}: {x.Message}"); }
            using var _ = split;
            if (!split.Train.ExampleShape.SequenceEqual(inputShape))
                throw new UsageException($"--data {e.Data}: examples of {string.Join("×", split.Train.ExampleShape)}, but the network takes {string.Join("×", inputShape)}");
            if (split.Train.ClassCount > classes)
                throw new UsageException($"--data {e.Data}: {split.Train.ClassCount} classes, but the network was trained on {classes}");
            var program = NetSpec.Build(e.Net, inputShape, classes, Activations.ByName(e.Activation), Losses.ByName(e.Loss));
            Weights loaded;
            try { loaded = WeightsFile.Load(path, program); }
            catch (DataFormatException x) { throw new UsageException(x.Message); }
            using var __ = loaded;
            var result = new JsonObject { ["run"] = folder.Path, ["weights"] = which, ["data"] = e.Data };
            foreach (var (name, set) in new[] { ("train", split.Train), ("validation", split.Validation), ("test", split.Test) })
            {
                if (set.Count == 0) continue;
                var evaluation = Trainer.Evaluate(program, loaded, set, loaded.Tensors[0].dtype);
                result[name] = new JsonObject { ["examples"] = set.Count, ["accuracy"] = Math.Round(evaluation.Accuracy, 6), ["loss"] = Math.Round(evaluation.Loss, 6) };
                if (!parsed.GetValue(json))
                    context.Output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"{name,-11} {set.Count,6} examples  accuracy {evaluation.Accuracy:F4}  loss {evaluation.Loss:F4}"));
            }
            if (parsed.GetValue(json)) context.Output.WriteLine(result.ToJsonString(Cli.Json));
            return 0;
        });
        return command;
    }
}
