using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using Lifting.Storage;

namespace Lifting.Host;

/// `lifting train` and `lifting resume RUN`.
///
/// The train command's options are the run's settings (`Experiment.Keys`) and the chosen method's
/// parameters: the method is read from the command line (or the --config file) before parsing,
/// and its parameters are added as options, so `train --method extraprop --help` lists them and
/// the method catalog validates their values. A flag that is neither is refused naming both.
public static class TrainCommand
{
    private static readonly string[] HostOptions = new[] { "config", "out", "force", "json", "plain", "log-every" }.Concat(ClusterFlags.Names).ToArray();

    private static Option<string> LogEveryOption() => new("--log-every")
    {
        Description = $"TensorBoard: log the mini-batch loss every N mini-batches (0 = per epoch only) [default: {TensorBoardLog.DefaultLogEvery}]",
        HelpName = "N",
    };

    private static int LogEvery(ParseResult parsed, Option<string> option) =>
        parsed.GetValue(option) is not { } text ? TensorBoardLog.DefaultLogEvery
        : int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) && n >= 0 ? n
        : throw new UsageException($"--log-every: '{text}' must be an integer >= 0");

    public static Command Create(string[] args, CliContext context)
    {
        var command = new Command("train", "Train a network into a run folder (config.json, metrics.jsonl, summary.json, checkpoint, weights, plots).")
        {
            TreatUnmatchedTokensAsErrors = false,
        };
        var config = new Option<string>("--config") { Description = "read the experiment from a JSON file (a run's config.json repeats that run); flags override it", HelpName = "FILE" };
        var output = new Option<string>("--out") { Description = "the run folder (default runs/DATE-TIME-METHOD); never overwritten unless --force", HelpName = "DIR" };
        var force = new Option<bool>("--force") { Description = "replace the contents of a non-empty --out folder" };
        var json = new Option<bool>("--json") { Description = "make the last line of output a JSON summary" };
        var plain = new Option<bool>("--plain") { Description = "plain lines instead of live progress bars" };
        var logEvery = LogEveryOption();
        foreach (var o in new Option[] { config, output, force, json, plain, logEvery }) command.Add(o);
        var cluster = new ClusterFlags();
        foreach (var o in cluster.All) command.Add(o);

        var runOptions = new List<(RunKey Key, Option Option)>();
        foreach (var key in Experiment.Keys)
        {
            Option option = key.IsFlag
                ? new Option<bool>("--" + key.Name) { Description = $"{key.Description}" }
                : new Option<string>("--" + key.Name) { Description = $"{key.Description} [default: {key.Default}]", HelpName = key.HelpName };
            runOptions.Add((key, option));
            command.Add(option);
        }

        var method = MethodOf(args);
        var methodOptions = new List<(MethodParameter Parameter, Option<string> Option)>();
        foreach (var p in method.Parameters)
        {
            if (Experiment.IsRunKey(p.Name) || HostOptions.Contains(p.Name)) continue; // unreachable as a flag; set it in a config file
            var option = new Option<string>("--" + p.Name)
            {
                Description = $"[{method.Name}] {p.Description} ({p.Domain}) [default: {p.Default}]",
                HelpName = p.Kind == ParameterKind.Flag ? "true|false" : "VALUE",
                Arity = p.Kind == ParameterKind.Flag ? ArgumentArity.ZeroOrOne : ArgumentArity.ExactlyOne,
            };
            methodOptions.Add((p, option));
            command.Add(option);
        }

        command.SetAction(parsed =>
        {
            var e = parsed.GetValue(config) is { } file ? Experiment.FromJsonFile(file) : new Experiment();
            foreach (var (key, option) in runOptions)
            {
                if (parsed.GetResult(option) is null) continue;
                var value = option is Option<bool> flag ? (parsed.GetValue(flag) ? "true" : "false") : parsed.GetValue((Option<string>)option)!;
                e = e.Set(key.Name, value, fromFlag: true);
            }
            if (!string.Equals(e.Method, method.Name, StringComparison.OrdinalIgnoreCase))
                throw new UsageException($"--method {e.Method}: the method changed while reading the options; give it once");
            foreach (var (p, option) in methodOptions)
                if (parsed.GetResult(option) is not null) e = e.WithParameter(p.Name, parsed.GetValue(option) ?? "true");
            var unmatched = parsed.UnmatchedTokens;
            if (unmatched.Count > 0)
            {
                var token = unmatched[0];
                if (token.StartsWith("--", StringComparison.Ordinal))
                    throw new UsageException($"unknown option {token}: not a train option, and method '{method.Name}' has no parameter '{token[2..].Split('=')[0]}' " +
                                             $"(its parameters: {string.Join(", ", method.Parameters.Select(p => p.Name))}; see lifting train --method {method.Name} --help)");
                throw new UsageException($"unexpected argument '{token}' (train takes options only; see lifting train --help)");
            }
            var distributed = cluster.Read(parsed);
            using var folder = RunFolder.ForOutput(parsed.GetValue(output), parsed.GetValue(force), e.Method);
            using var run = PreparedRun.Prepare(e);
            return Train(run, folder, context, parsed.GetValue(json), parsed.GetValue(plain), resume: null, LogEvery(parsed, logEvery), distributed);
        });
        return command;
    }

    /// The method named by --method (or by the --config file), before the options are parsed.
    private static MethodDefinition MethodOf(string[] args)
    {
        if (args.Length == 0 || args[0] != "train") return Methods.Find("backprop");
        string? name = null;
        for (int i = 1; i < args.Length; i++)
        {
            if (args[i] == "--method" && i + 1 < args.Length) name = args[i + 1];
            else if (args[i].StartsWith("--method=", StringComparison.Ordinal) || args[i].StartsWith("--method:", StringComparison.Ordinal)) name = args[i][9..];
        }
        if (name is null)
            for (int i = 1; i + 1 < args.Length; i++)
                if (args[i] == "--config")
                {
                    name = Experiment.FromJsonFile(args[i + 1]).Method;
                    break;
                }
        try { return Methods.Find(name ?? "backprop"); }
        catch (ArgumentException x) { throw new UsageException($"--method: {x.Message.TrimEnd('.')}"); }
    }

    public static Command Resume(CliContext context)
    {
        var command = new Command("resume", "Continue an interrupted run from its checkpoint, in its folder; it ends exactly as the uninterrupted run would. --epochs N extends a run (completed or not) to N epochs.");
        var run = new Argument<string>("RUN") { Description = "the run folder" };
        var epochs = new Option<string>("--epochs")
        {
            Description = "extend the run to N epochs in all (N >= the planned epochs); equal to a run planned with N epochs when no schedule of the method depends on the planned count (docs/host.md)",
            HelpName = "N",
        };
        command.Add(epochs);
        var json = new Option<bool>("--json") { Description = "make the last line of output a JSON summary" };
        var plain = new Option<bool>("--plain") { Description = "plain lines instead of live progress bars" };
        command.Add(run);
        command.Add(json);
        command.Add(plain);
        var logEvery = LogEveryOption();
        command.Add(logEvery);
        var cluster = new ClusterFlags();
        foreach (var o in cluster.All) command.Add(o);
        command.SetAction(parsed =>
        {
            var distributed = cluster.Read(parsed);
            var path = parsed.GetValue(run)!;
            using var folder = RunFolder.Existing(path);
            folder.Claim();
            var status = folder.ReadJson(RunFolder.Summary)["status"]?.GetValue<string>() ?? "";
            var experiment = Experiment.FromJsonFile(folder.File(RunFolder.Config));
            var planned = experiment.Epochs;
            if (parsed.GetValue(epochs) is { } text)
            {
                experiment = experiment.Set("epochs", text, fromFlag: true);
                if (experiment.Epochs < planned)
                    throw new UsageException($"--epochs {experiment.Epochs}: fewer than the {planned} epochs the run plans; a run can be extended, not shortened");
                if (status == RunOutcome.Completed && experiment.Epochs == planned)
                    throw new UsageException($"--epochs {experiment.Epochs}: the run is completed with its {planned} epochs; give more to extend it");
            }
            else if (status == RunOutcome.Completed) throw new UsageException($"{path}: the run is completed; nothing to resume (--epochs N extends it to N epochs)");
            if (status == RunOutcome.Diverged) throw new UsageException($"{path}: the run diverged; resuming would diverge again (train anew with other settings)");
            if (!File.Exists(folder.File(RunFolder.CheckpointFile)))
            {
                var done = folder.ReadMetrics().Count;
                throw new UsageException(done > 0
                    ? $"{path}: {RunFolder.CheckpointFile} is missing, though {done} epoch{(done == 1 ? " is" : "s are")} done (deleted or moved?); train anew"
                    : $"{path}: no checkpoint (the run stopped before its first epoch ended); train anew");
            }
            using var prepared = PreparedRun.Prepare(experiment);
            using var checkpoint = LoadCheckpoint(folder);
            if (checkpoint.State.Epochs > experiment.Epochs)
                throw new UsageException($"{path}: the checkpoint plans {checkpoint.State.Epochs} epochs, config.json {experiment.Epochs}; resume --epochs {checkpoint.State.Epochs}");
            if (status == RunOutcome.Completed && checkpoint.State.CompletedEpochs < planned)
                throw new UsageException($"{path}: the run completed after {checkpoint.State.CompletedEpochs} of {planned} epochs (stopped early by --patience); extending it would stop again");
            return Train(prepared, folder, context, parsed.GetValue(json), parsed.GetValue(plain), checkpoint, LogEvery(parsed, logEvery), distributed);
        });
        return command;
    }

    private static Checkpoint LoadCheckpoint(RunFolder folder)
    {
        try { return Checkpoint.Load(folder.File(RunFolder.CheckpointFile)); }
        catch (Lifting.Data.DataFormatException x) { throw new UsageException($"{folder.Path}: {x.Message}"); }
    }

    /// "; defect 3.10e-02", or with the penalty's feasibility pass "; defect 3.10e-02 at the end of
    /// training, 0 after the feasibility pass": the first is the figure the sweep and demo tables report.
    internal static string DefectText(JsonObject s)
    {
        static double? Value(JsonNode? n) => n is JsonValue v && v.TryGetValue<double>(out var d) ? d : null;
        if (Value(s["defect"]) is not { } after) return "";
        if (Value(s["defect_before_finish"]) is { } before && before != after)
            return $"; defect {Cli.Sci(before)} at the end of training, {Cli.Sci(after)} after the feasibility pass";
        return $"; defect {Cli.Sci(after)}";
    }

    private static int Train(PreparedRun run, RunFolder folder, CliContext context, bool json, bool plain, Checkpoint? resume, int logEvery, ClusterRequest? distributed = null)
    {
        var output = context.Output;
        var progress = Progress.Create(output, context.Live && !plain);
        using var session = distributed is null ? null : ClusterSession.Open(distributed, run, line => progress.Line($"cluster: {line}"));
        var hooks = session is null ? null : new RunHooks
        {
            Formulation = session.Formulation,
            Solver = session.Solver,
            Started = session.Started,
            Ended = session.Ended,
        };
        var data = run.Data;
        output.WriteLine($"{run.Method.Name} on {run.Experiment.Data} ({data.Train.Count} train / {data.Validation.Count} validation / {data.Test.Count} test), " +
                         $"device {run.Engine.Device}, {run.Engine.Threads} threads, LibTorch {run.Engine.LibTorch}");
        output.WriteLine($"  program   {run.Program}");
        foreach (var (key, value) in run.Method.Summary) output.WriteLine($"  {key,-18}{value}");
        foreach (var warning in run.Warnings) output.WriteLine(warning);
        if (session is not null) output.WriteLine($"  cluster   {session.Describe()}");
        output.WriteLine($"  run folder {folder.Path}{(resume is null ? "" : $" (resuming: {resume})")}");
        var outcome = Runner.Execute(run, folder, progress, context.Cancellation, resume, logEvery: logEvery, hooks: hooks);
        var s = outcome.Summary;
        if (outcome.Status == RunOutcome.Completed)
            output.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"selected epoch {s["selected_epoch"]} by {(s["selected_by"]?.GetValue<string>() == "validation_accuracy" ? "validation accuracy" : run.Options.Selection == Lifting.Training.Selection.LastEpoch ? "last epoch (--select last)" : "last epoch (no validation split)")}: " +
                $"validation {s["validation_accuracy"]?.ToJsonString() ?? "–"}, test {s["test_accuracy"]}; last epoch: test {s["final_test_accuracy"]}" +
                $"{DefectText(s)}; run folder {folder.Path}"));
        else context.Error.WriteLine($"lifting: run {outcome.Status}: {s["message"]}");
        if (json)
        {
            var line = (JsonObject)s.DeepClone();
            foreach (var (k, v) in Runner.Timing(outcome.History)) if (v is not JsonArray) line[k] = v?.DeepClone();
            output.WriteLine(line.ToJsonString(Cli.Json));
        }
        return outcome.ExitCode;
    }
}
