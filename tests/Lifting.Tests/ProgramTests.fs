module Lifting.Tests.ProgramTests

open Expecto

[<Tests>]
let tests = testList "ProgramTests" []
