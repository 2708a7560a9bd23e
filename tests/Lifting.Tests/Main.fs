module Lifting.Tests.Main

open Expecto

/// Runs every [<Tests>] value in this assembly and ends with one line "N passed, N failed",
/// which CI reads.
[<EntryPoint>]
let main argv =
    let summaryLine (summary: Impl.TestRunSummary) =
        printfn "%d passed, %d failed" summary.passed.Length (summary.failed.Length + summary.errored.Length)
    let printer =
        { Impl.TestPrinters.defaultPrinter with
            summary = fun config summary ->
                async {
                    do! Impl.TestPrinters.defaultPrinter.summary config summary
                    summaryLine summary
                } }
    Tests.runTestsInAssemblyWithCLIArgs [ CLIArguments.Printer printer ] argv
