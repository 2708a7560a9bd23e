module Lifting.Tests.Main

open Expecto

/// Runs every [<Tests>] value in this assembly and ends with one plain line "N passed, N failed",
/// which CI reads.
[<EntryPoint>]
let main argv =
    let mutable counts = None
    let printer =
        { Impl.TestPrinters.defaultPrinter with
            summary = fun config summary ->
                counts <- Some(summary.passed.Length, summary.failed.Length + summary.errored.Length)
                Impl.TestPrinters.defaultPrinter.summary config summary }
    let code = Tests.runTestsInAssemblyWithCLIArgs [ CLIArguments.Printer printer; CLIArguments.No_Spinner; CLIArguments.Colours 0 ] argv
    match counts with
    | Some(passed, failed) -> printfn "\n%d passed, %d failed" passed failed
    | None -> printfn "\n0 passed, 1 failed"
    code
