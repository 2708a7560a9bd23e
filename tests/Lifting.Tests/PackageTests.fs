/// The packages as a user gets them: packed from this repository into a local folder feed, then
/// used from fresh projects in a temporary folder outside it. The programs these projects run are
/// the README's library examples, read from README.md, so the README cannot drift from what works.
module Lifting.Tests.PackageTests

open System
open System.Diagnostics
open System.IO
open System.Text.RegularExpressions
open Expecto

/// The repository root: the folder above the test binaries that holds Lifting.sln.
let repository =
    lazy (
        let rec up (d: DirectoryInfo | null) =
            match d with
            | null -> failwith $"Lifting.sln not found above {AppContext.BaseDirectory}"
            | d when File.Exists(Path.Combine(d.FullName, "Lifting.sln")) -> d.FullName
            | d -> up d.Parent
        up (DirectoryInfo AppContext.BaseDirectory))

/// A version of its own for every run: a package restored by an earlier run (or found in the
/// machine's package folder) can never stand in for the one packed now.
let version = "0.1.0-test." + DateTime.UtcNow.ToString("yyyyMMddHHmmss")

/// The machine's NuGet package folder (where restored packages already are).
let machinePackages =
    match Environment.GetEnvironmentVariable "NUGET_PACKAGES" with
    | null | "" -> Path.Combine(Environment.GetFolderPath Environment.SpecialFolder.UserProfile, ".nuget", "packages")
    | p -> p

/// Runs a command to completion; fails the test with its output when it exits non-zero.
let run (workingDirectory: string) (environment: (string * string) list) (file: string) (args: string list) =
    let info = ProcessStartInfo(file, WorkingDirectory = workingDirectory, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false)
    for a in args do info.ArgumentList.Add a
    // The test runner's own MSBuild and NuGet settings must not leak into the child builds.
    for name in [ "MSBuildExtensionsPath"; "MSBuildSDKsPath"; "MSBUILD_EXE_PATH"; "NUGET_PACKAGES"; "DOTNET_HOST_PATH" ] do
        info.Environment.Remove name |> ignore
    info.Environment.["DOTNET_CLI_TELEMETRY_OPTOUT"] <- "1"
    info.Environment.["DOTNET_NOLOGO"] <- "1"
    for (k, v) in environment do info.Environment.[k] <- v
    use p = match Process.Start info with null -> failwith $"could not start {file}" | p -> p
    let out = p.StandardOutput.ReadToEndAsync()
    let err = p.StandardError.ReadToEndAsync()
    p.WaitForExit()
    let text = out.Result + err.Result
    if p.ExitCode <> 0 then
        let tail = text.Split('\n') |> Array.rev |> Array.truncate 40 |> Array.rev |> String.concat "\n"
        failtest $"`{file} {String.Join(' ', args)}` in {workingDirectory} exited with {p.ExitCode}:\n{tail}"
    text

let dotnet dir args = run dir [] "dotnet" args

/// The code block that follows `<!-- README-EXAMPLE: name -->` in README.md.
let readmeExample (name: string) =
    let readme = File.ReadAllText(Path.Combine(repository.Force(), "README.md"))
    let m = Regex.Match(readme, $"<!-- README-EXAMPLE: {Regex.Escape name} -->\\s*```[a-z]*\\n(.*?)\\n```", RegexOptions.Singleline)
    if not m.Success then failtest $"README.md has no example marked {name}"
    m.Groups.[1].Value

/// A temporary folder outside the repository with a NuGet.Config that restores from `feed` and
/// finds everything else in the machine's package folder, while new packages (ours) go to a
/// package folder of its own: nothing is added to, or read stale from, the machine's folder.
let workspace (feed: string) =
    let dir = Path.Combine(Path.GetTempPath(), "lifting-packages-" + Guid.NewGuid().ToString("N"))
    Directory.CreateDirectory dir |> ignore
    let config =
        [ """<?xml version="1.0" encoding="utf-8"?>"""
          "<configuration>"
          $"""  <config><add key="globalPackagesFolder" value="{Path.Combine(dir, "packages")}" /></config>"""
          $"""  <packageSources><clear /><add key="lifting" value="{feed}" /></packageSources>"""
          $"""  <fallbackPackageFolders><clear /><add key="machine" value="{machinePackages}" /></fallbackPackageFolders>"""
          "</configuration>" ]
    File.WriteAllLines(Path.Combine(dir, "NuGet.Config"), config)
    dir

/// `dotnet pack` of the given projects into a fresh folder feed (the tool for linux-x64 only: the
/// package a Linux user installs).
let pack (projects: string list) =
    let feed = Path.Combine(Path.GetTempPath(), "lifting-feed-" + Guid.NewGuid().ToString("N"))
    AppDomain.CurrentDomain.ProcessExit.Add(fun _ -> if Directory.Exists feed then Directory.Delete(feed, true))
    for project in projects do
        let args = [ "pack"; Path.Combine("src", project); "-c"; "Release"; "-o"; feed; "--nologo"; "-v"; "quiet"; $"-p:PackageVersion={version}" ]
        let extra = if project = "Lifting.Tool" then [ "-p:ToolPackageRuntimeIdentifiers=linux-x64" ] else [ "--no-build" ]
        dotnet (repository.Force()) (args @ extra) |> ignore
    feed

let feed = lazy (pack [ "Lifting.Core"; "Lifting.FSharp"; "Lifting.Tool" ])

/// The dependencies a .nupkg's nuspec declares, as "id version".
let nuspecDependencies (nupkg: string) =
    use zip = Compression.ZipFile.OpenRead nupkg
    let entry = zip.Entries |> Seq.find (fun e -> e.FullName.EndsWith ".nuspec")
    use reader = new StreamReader(entry.Open())
    let doc = Xml.Linq.XDocument.Parse(reader.ReadToEnd())
    [ for d in doc.Descendants() do
        if d.Name.LocalName = "dependency" then
            let attribute (name: string) = match d.Attribute(Xml.Linq.XName.Get name) with null -> "" | a -> a.Value
            yield attribute "id" + " " + attribute "version" ]

let packageFiles (nupkg: string) =
    use zip = Compression.ZipFile.OpenRead nupkg
    [ for e in zip.Entries -> e.FullName ]

/// Accuracies printed as "NAME: test accuracy 0.xyz".
let accuracies (output: string) =
    [ for m in Regex.Matches(output, @"(\S+): test accuracy ([0-9.]+)") -> m.Groups.[1].Value, float m.Groups.[2].Value ]

/// True when libLibTorchSharp.so under `dir` has its GLIBCXX_3.4.32 need marked weak.
let weakenedUnder (dir: string) =
    let file = Directory.GetFiles(dir, "libLibTorchSharp.so", SearchOption.AllDirectories) |> Array.exactlyOne
    let readelf = run dir [] "readelf" [ "-V"; file ]
    Regex.IsMatch(readelf, @"GLIBCXX_3\.4\.32\s+Flags: WEAK")

let systemLacksVersion () =
    [ "/usr/lib/x86_64-linux-gnu/libstdc++.so.6"; "/lib/x86_64-linux-gnu/libstdc++.so.6" ]
    |> List.filter File.Exists
    |> List.forall (fun f -> not ((File.ReadAllText f).Contains "GLIBCXX_3.4.32"))

/// A console project from `dotnet new` with `package` referenced and `program` as its code; built
/// and run; returns its output.
let consoleProject (dir: string) (language: string) (package: string) (file: string) (program: string) =
    let project = Path.Combine(dir, language)
    dotnet dir [ "new"; "console"; "-lang"; language; "-o"; project; "--no-restore" ] |> ignore
    File.WriteAllText(Path.Combine(project, file), program)
    dotnet project [ "add"; "package"; package; "--version"; version; "--no-restore" ] |> ignore
    dotnet project [ "build"; "-c"; "Release"; "--nologo"; "-v"; "quiet" ] |> ignore
    let name = Path.GetFileName(project: string) |> string
    let output = dotnet project [ Path.Combine("bin", "Release", "net10.0", name + ".dll") ]
    project, output

/// One after the other: each builds or installs about 500 MB of native libraries.
[<Tests>]
let tests =
    testSequenced <| testList "PackageTests" [
        test "dotnet pack: Lifting.Core carries the load fix in build/ and buildTransitive/ and depends on TorchSharp-cpu 0.107.0 alone; Lifting.FSharp on Lifting.Core and FSharp.Core 6.0.0 or later" {
            let feed = feed.Force()
            let core = Path.Combine(feed, $"Lifting.Core.{version}.nupkg")
            Expect.equal (nuspecDependencies core) [ "TorchSharp-cpu [0.107.0]" ] "Lifting.Core's dependencies"
            let files = packageFiles core
            for f in [ "build/Lifting.Core.targets"; "build/WeakenGlibcxxNeed.cs"; "buildTransitive/Lifting.Core.targets"; "buildTransitive/WeakenGlibcxxNeed.cs"; "lib/net10.0/Lifting.Core.dll"; "README.md" ] do
                Expect.contains files f $"Lifting.Core has {f}"
            let fsharp = nuspecDependencies (Path.Combine(feed, $"Lifting.FSharp.{version}.nupkg")) |> List.sort
            Expect.equal fsharp [ "FSharp.Core 6.0.0"; $"Lifting.Core {version}" ] "Lifting.FSharp's dependencies"
            let tools = Directory.GetFiles(feed, "Lifting.Tool*.nupkg") |> Array.map Path.GetFileName |> Array.sort
            Expect.equal tools [| $"Lifting.Tool.{version}.nupkg"; $"Lifting.Tool.linux-x64.{version}.nupkg" |] "the tool: a pointer package and the linux-x64 package"
        }

        test "a fresh C# console project outside the repository builds against the Lifting.Core package and runs the README's C# example (digits, ExtraProp, 5 epochs: test accuracy >= 0.8)" {
            let dir = workspace (feed.Force())
            try
                let project, output = consoleProject dir "C#" "Lifting.Core" "Program.cs" (readmeExample "Program.cs")
                let results = accuracies output
                Expect.equal (List.map fst results) [ "extraprop" ] $"one result line:\n{output}"
                for (name, accuracy) in results do Expect.isGreaterThanOrEqual accuracy 0.8 $"{name}: {output}"
                if systemLacksVersion () then
                    Expect.isTrue (weakenedUnder (Path.Combine(project, "bin"))) "the output folder's libLibTorchSharp.so is weakened"
                let cached = Path.Combine(machinePackages, "torchsharp", "0.107.0", "runtimes", "linux-x64", "native")
                Expect.isFalse (weakenedUnder cached) "the package folder's libLibTorchSharp.so is left as shipped"
            finally Directory.Delete(dir, true)
        }

        test "a fresh F# console project outside the repository builds against the Lifting.FSharp package (Lifting.Core's fix arrives transitively) and runs the README's F# example (backprop and ExtraProp: test accuracy >= 0.8)" {
            let dir = workspace (feed.Force())
            try
                let project, output = consoleProject dir "F#" "Lifting.FSharp" "Program.fs" (readmeExample "Program.fs")
                let results = accuracies output
                Expect.equal (List.map fst results) [ "backprop"; "extraprop" ] $"two result lines:\n{output}"
                for (name, accuracy) in results do Expect.isGreaterThanOrEqual accuracy 0.8 $"{name}: {output}"
                if systemLacksVersion () then
                    Expect.isTrue (weakenedUnder (Path.Combine(project, "bin"))) "the output folder's libLibTorchSharp.so is weakened by Lifting.Core's buildTransitive targets"
            finally Directory.Delete(dir, true)
        }

        test "the lifting tool installs from the folder feed into a tool path and trains (lifting train --epochs 1 --json)" {
            let dir = workspace (feed.Force())
            try
                let tools = Path.Combine(dir, "tools")
                dotnet dir [ "tool"; "install"; "Lifting.Tool"; "--version"; version; "--tool-path"; tools; "--add-source"; feed.Force() ] |> ignore
                let output = run dir [] (Path.Combine(tools, "lifting")) [ "train"; "--epochs"; "1"; "--json" ]
                let summary = Text.Json.JsonDocument.Parse(output.TrimEnd().Split('\n') |> Array.last)
                let accuracy = summary.RootElement.GetProperty("test_accuracy").GetDouble()
                Expect.isGreaterThanOrEqual accuracy 0.5 $"one epoch of backprop on digits: {output}"
            finally Directory.Delete(dir, true)
        }
    ]
