module Lifting.Tests.Main

open System
open Expecto

/// Tests that take more than about 20 s each on a quiet 2-core machine (measured with this
/// runner's per-test times), run only when LIFTING_SLOW_TESTS=1: the everyday run skips them
/// (reported as skipped), CI sets the variable. Full names as the runner prints them.
let slowTests : string list = []

let slowEnabled () = Environment.GetEnvironmentVariable "LIFTING_SLOW_TESTS" = "1"

/// `test` with the tests of `slow` marked pending (skipped) unless LIFTING_SLOW_TESTS=1.
let withSlowSkipped (slow: string list) (test: Test) =
    let slow = Set.ofList slow
    let rec mark (path: string list) (t: Test) =
        match t with
        | TestLabel(label, inner, state) -> TestLabel(label, mark (path @ [ label ]) inner, state)
        | TestCase(code, _) when slow.Contains(String.Join(".", path)) -> TestCase(code, Pending)
        | TestCase _ -> t
        | TestList(tests, state) -> TestList(tests |> List.map (mark path), state)
        | Test.Sequenced(method, inner) -> Test.Sequenced(method, mark path inner)
    mark [] test

/// One line per finished test, as it finishes: "[ 12/420] ok      3.1 s  HostTests.train on …",
/// failures with their message below; plain text (colour only on a terminal). The run ends with
/// one plain line "N passed, N failed", which CI reads.
type LinePrinter() =
    let gate = obj ()
    let mutable finished = 0
    let mutable total = 0
    let colour = not Console.IsOutputRedirected && Environment.GetEnvironmentVariable "NO_COLOR" |> String.IsNullOrEmpty
    let paint code (s: string) = if colour then $"\u001b[{code}m{s}\u001b[0m" else s
    member val Passed = 0 with get, set
    member val Failed = 0 with get, set
    member val Skipped = 0 with get, set
    member this.Line (status: string) (code: string) (name: string) (time: TimeSpan option) (detail: string option) =
        lock gate (fun () ->
            finished <- finished + 1
            let width = string total |> String.length
            let seconds = match time with Some t -> $"{t.TotalSeconds,7:F1} s" | None -> "         "
            Console.Out.WriteLine($"[{(string finished).PadLeft width}/{total}] {paint code (status.PadRight 7)} {seconds}  {name}")
            match detail with
            | Some d -> for l in d.TrimEnd().Split('\n') do Console.Out.WriteLine("        " + l.TrimEnd('\r'))
            | None -> ()
            Console.Out.Flush())
    member this.Printers =
        let unit = async.Return()
        { Impl.TestPrinters.silent with
            beforeRun = fun tests ->
                async {
                    total <- Test.toTestCodeList tests |> Seq.length
                    Console.Out.WriteLine($"running {total} tests")
                    Console.Out.Flush()
                }
            passed = fun name time -> this.Passed <- this.Passed + 1; this.Line "ok" "32" name (Some time) None; unit
            ignored = fun name reason -> this.Skipped <- this.Skipped + 1; this.Line "skipped" "33" name None (Some reason); unit
            failed = fun name message time -> this.Failed <- this.Failed + 1; this.Line "FAILED" "31" name (Some time) (Some message); unit
            exn = fun name e time -> this.Failed <- this.Failed + 1; this.Line "ERROR" "31" name (Some time) (Some(e.ToString())); unit
            summary = fun _ summary ->
                async {
                    let slowest = summary.results |> List.sortByDescending (fun (_, r) -> r.duration) |> List.truncate 10
                    Console.Out.WriteLine($"done in {summary.duration.TotalSeconds:F0} s; slowest:")
                    for (t, r) in slowest do Console.Out.WriteLine($"  {r.duration.TotalSeconds,7:F1} s  {String.Join('.', t.name)}")
                    Console.Out.Flush()
                } }

/// Runs every [<Tests>] value in this assembly, one test at a time, printing a line per test as it
/// finishes, and ends with one plain line "N passed, N failed", which CI reads.
///
/// Sequenced because of a TorchSharp 0.107 race (docs/engine.md, "A TorchSharp race"): a Scalar
/// made implicitly from a number can be finalised while LibTorch still reads it when another
/// thread triggers a garbage collection during the native call; tests running in parallel make
/// that far more likely. LibTorch still uses every core inside each test.
[<EntryPoint>]
let main argv =
    let all = Impl.testFromThisAssembly () |> Option.defaultValue (TestList([], Normal))
    let tests = if slowEnabled () then all else withSlowSkipped slowTests all
    let printer = LinePrinter()
    let code = runTestsWithCLIArgs [ CLIArguments.Printer printer.Printers; CLIArguments.No_Spinner; CLIArguments.Colours 0; CLIArguments.Sequenced ] argv tests
    if printer.Skipped > 0 && not (slowEnabled ()) then
        printfn "%d skipped (slow; LIFTING_SLOW_TESTS=1 runs them)" printer.Skipped
    // A run that stopped before any test (bad arguments, a crash) must not read as a success.
    let failed = if code <> 0 && printer.Failed = 0 then 1 else printer.Failed
    printfn "\n%d passed, %d failed" printer.Passed failed
    code
