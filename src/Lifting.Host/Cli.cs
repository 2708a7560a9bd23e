using System.CommandLine;
using System.CommandLine.Help;
using System.Globalization;
using System.Text.Json;
using Lifting.Data;
using Lifting.Solvers;
using Lifting.Training;

namespace Lifting.Host;

/// What every command shares: where to write, whether bars may be live, and the Ctrl-C token.
public sealed record CliContext(TextWriter Output, TextWriter Error, CancellationToken Cancellation, bool Live)
{
    public Progress Progress() => Host.Progress.Create(Output, Live);
}

/// The `lifting` command (System.CommandLine). Only the host prints or writes files. Exit codes:
/// 0 done, 1 internal failure, 2 bad input (one line on standard error naming the problem),
/// 3 a run diverged, 130 interrupted by Ctrl-C (the checkpoint and summary are saved).
public static class Cli
{
    public const int BadInput = 2;

    /// Named literals for non-finite numbers; text as written (→, λ, +), not \u escapes.
    internal static readonly JsonSerializerOptions Json = new()
    {
        NumberHandling = System.Text.Json.Serialization.JsonNumberHandling.AllowNamedFloatingPointLiterals,
        Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    internal static readonly JsonSerializerOptions IndentedJson = new(Json) { WriteIndented = true };

    public static int Run(string[] args, TextWriter output, TextWriter error) => Run(args, output, error, CancellationToken.None, live: false);

    public static int Run(string[] args, TextWriter output, TextWriter error, CancellationToken cancellation, bool live)
    {
        try
        {
            var context = new CliContext(output, error, cancellation, live);
            var root = Root(args, context);
            var parsed = root.Parse(args);
            if (parsed.Errors.Count > 0 && parsed.Action is not HelpAction && Repeated(parsed.Errors[0].Message, args) is { } repeated)
                throw new UsageException(repeated);
            if (parsed.Errors.Count > 0 && parsed.Action is not HelpAction)
                throw new UsageException(OneLine(parsed.Errors[0].Message) + $" (see lifting {(parsed.CommandResult.Command == root ? "" : parsed.CommandResult.Command.Name + " ")}--help)");
            return parsed.Invoke(new InvocationConfiguration { Output = output, Error = error, EnableDefaultExceptionHandler = false });
        }
        catch (Exception e) when (IsUserError(e))
        {
            error.WriteLine($"lifting: error: {OneLine(e.Message)}");
            return BadInput;
        }
        catch (Exception e)
        {
            error.WriteLine($"lifting: internal error ({e.GetType().Name}): {OneLine(e.Message)}");
            return 1;
        }
    }

    private static bool IsUserError(Exception e) => e is UsageException or DataFormatException or ArgumentException
        or InvalidOperationException or IOException or UnauthorizedAccessException or JsonException;

    /// "--threads is given 2 times (1, -2); give it once" for System.CommandLine's "Option
    /// '--threads' expects a single argument but 2 were provided", which reads as if one flag had
    /// been given two values.
    private static string? Repeated(string message, string[] args)
    {
        var match = System.Text.RegularExpressions.Regex.Match(message, "^Option '(--[^']+)' expects a single argument");
        if (!match.Success) return null;
        var name = match.Groups[1].Value;
        var values = new List<string>();
        for (int i = 0; i < args.Length; i++)
        {
            if (args[i] == name && i + 1 < args.Length) values.Add(args[i + 1]);
            else if (args[i].StartsWith(name + "=", StringComparison.Ordinal) || args[i].StartsWith(name + ":", StringComparison.Ordinal)) values.Add(args[i][(name.Length + 1)..]);
        }
        return values.Count < 2 ? null : $"{name} is given {values.Count} times ({string.Join(", ", values)}); give it once";
    }

    internal static string OneLine(string message) => message.ReplaceLineEndings(" ").Trim();

    /// The root is named "lifting" whatever the executable (tests run it in-process), with --help on
    /// every command.
    private static Command Root(string[] args, CliContext context)
    {
        var root = new Command("lifting", "lifting — train neural networks by lifting them (multiple shooting, penalties, saddle-point solvers). " +
                                          "Exit codes: 0 done, 2 bad input, 3 diverged, 130 interrupted.");
        root.Add(new HelpOption { Recursive = true });
        root.Add(TrainCommand.Create(args, context));
        root.Add(TrainCommand.Resume(context));
        root.Add(Demo.Create(context));
        root.Add(Sweep.Create(context));
        root.Add(CompareCommand.Compare(context));
        root.Add(CompareCommand.Plot(context));
        root.Add(EvalCommand.Create(context));
        root.Add(MethodsCommand(context));
        root.Add(Bench.Create(context));
        root.Add(WorkerCommand.Create(context));
        root.SetAction(parsed =>
        {
            new HelpAction().Invoke(parsed);
            return 0;
        });
        return root;
    }

    /// `lifting methods`: one line per method by family (and the solvers and step rules);
    /// `lifting methods NAME`: that method's parameters (each a train flag) with their defaults.
    private static Command MethodsCommand(CliContext context)
    {
        var command = new Command("methods", "List the methods one line each by family, the solvers and the step rules; `lifting methods NAME` lists a method's parameters (each a train flag --NAME VALUE) with their defaults.");
        var name = new Argument<string?>("NAME") { Description = "a method whose parameters to list", Arity = ArgumentArity.ZeroOrOne };
        command.Add(name);
        command.SetAction(parsed =>
        {
            var output = context.Output;
            var wanted = parsed.GetValue(name);
            if (wanted is not null)
            {
                MethodDefinition m;
                try { m = Methods.Find(wanted); }
                catch (ArgumentException e) { context.Error.WriteLine($"lifting: error: {e.Message}"); return 2; }
                output.WriteLine($"{m.Name} (family {m.Family}): {m.Description}");
                output.WriteLine($"formulation at the defaults: {Methods.Resolve(m.Name).Formulation.Description}");
                output.WriteLine("parameters (lifting train --method " + m.Name + " --NAME VALUE):");
                // Columns as wide as their widest entry (a catalog's list of names grows with it).
                int flagWidth = m.Parameters.Max(p => p.Name.Length) + 2, defaultWidth = Math.Max(14, m.Parameters.Max(p => p.Default.Length) + 2),
                    domainWidth = Math.Max(28, m.Parameters.Max(p => p.Domain.Length) + 2);
                foreach (var p in m.Parameters)
                    output.WriteLine($"  --{p.Name.PadRight(flagWidth)}{p.Default.PadRight(defaultWidth)}{p.Domain.PadRight(domainWidth)}{p.Description}");
                return 0;
            }
            output.WriteLine("methods (--method) by family, * = the family's default (its representative in `lifting demo`); `lifting methods NAME` lists a method's parameters:");
            var representatives = Methods.Representatives.Select(m => m.Name).ToHashSet();
            var nameWidth = Methods.All.Max(m => m.Name.Length) + 2;
            foreach (var family in Methods.All.GroupBy(m => m.Family))
            {
                output.WriteLine($"{family.Key}:");
                foreach (var m in family)
                    output.WriteLine($"  {(representatives.Contains(m.Name) ? "*" : " ")}{m.Name.PadRight(nameWidth)}{m.Description}");
            }
            output.WriteLine("solvers (--solver): " + string.Join(", ", SolverCatalog.All.Select(s => s.Name)));
            output.WriteLine("step rules (--optimizer, --optimizer-states, ...): " + string.Join(", ", StepRuleCatalog.All.Select(r => r.Name)));
            return 0;
        });
        return command;
    }

    /// A small quantity as people read it: 4.20e-01 (not .NET's 4.20E-001); 0 as "0".
    public static string Sci(double v, int digits = 2) =>
        v == 0 ? "0" : !double.IsFinite(v) ? v.ToString(CultureInfo.InvariantCulture)
        : v.ToString(SciFormat(digits), CultureInfo.InvariantCulture);

    /// The custom format of `Sci`: "0.00e+00" for two digits after the point.
    public static string SciFormat(int digits) => (digits > 0 ? "0." + new string('0', digits) : "0") + "e+00";

    internal static string F(double v, string format = "F4") => double.IsFinite(v) ? v.ToString(format, CultureInfo.InvariantCulture) : v.ToString(CultureInfo.InvariantCulture);
}
