; NSIS script for the ScanFort Windows installer.
;   makensis /DVERSION=0.1.0 /DSOURCE=..\..\build\dist\scanfort installer\windows\scanfort.nsi
; SOURCE is the PyInstaller --onedir bundle built by installer/scanfort.spec.
Unicode true
!include "LogicLib.nsh"
!include "x64.nsh"

!ifndef VERSION
  !error "pass /DVERSION=x.y.z"
!endif
!ifndef SOURCE
  !error "pass /DSOURCE=path\to\bundle"
!endif
!ifndef OUTFILE
  !define OUTFILE "scanfort-${VERSION}-setup.exe"
!endif

Name "ScanFort ${VERSION}"
OutFile "${OUTFILE}"
InstallDir "$PROGRAMFILES64\ScanFort"
RequestExecutionLevel admin
ShowInstDetails show

!define UNINSTALL_KEY "Software\Microsoft\Windows\CurrentVersion\Uninstall\ScanFort"

Function .onInit
  ${IfNot} ${RunningX64}
    MessageBox MB_ICONSTOP "ScanFort needs 64-bit Windows."
    Abort
  ${EndIf}
  SetRegView 64
FunctionEnd

Section "ScanFort"
  SetShellVarContext all  ; $APPDATA = %ProgramData%
  ; An upgrade: stop the running service before its files are replaced. In-flight work
  ; is finished or parked in the journal and resumes on start.
  IfFileExists "$INSTDIR\scanfort.exe" 0 +2
    ExecWait '"$INSTDIR\scanfort.exe" service stop'

  SetOutPath "$INSTDIR"
  File /r "${SOURCE}\*.*"

  ; Config, spool and logs live in %ProgramData%\scanfort and survive upgrades and
  ; uninstalls; the default config is written only when none exists.
  CreateDirectory "$APPDATA\scanfort"
  IfFileExists "$APPDATA\scanfort\agent.toml" +2 0
    File "/oname=$APPDATA\scanfort\agent.toml" "agent.toml"

  ; Registers the service (virtual account NT SERVICE\ScanFort, delayed auto start,
  ; recovery actions, Event Log source). It is started once the config is valid.
  ExecWait '"$INSTDIR\scanfort.exe" service install --no-start --config "$APPDATA\scanfort\agent.toml"' $0
  ${If} $0 != 0
    DetailPrint "Edit $APPDATA\scanfort\agent.toml, then run: scanfort service install"
  ${EndIf}

  WriteUninstaller "$INSTDIR\uninstall.exe"
  WriteRegStr HKLM "${UNINSTALL_KEY}" "DisplayName" "ScanFort"
  WriteRegStr HKLM "${UNINSTALL_KEY}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKLM "${UNINSTALL_KEY}" "Publisher" "ScanFort"
  WriteRegStr HKLM "${UNINSTALL_KEY}" "UninstallString" '"$INSTDIR\uninstall.exe"'
  WriteRegDWORD HKLM "${UNINSTALL_KEY}" "NoModify" 1
  WriteRegDWORD HKLM "${UNINSTALL_KEY}" "NoRepair" 1
SectionEnd

Section "Uninstall"
  SetShellVarContext all
  SetRegView 64
  ExecWait '"$INSTDIR\scanfort.exe" service uninstall'
  RMDir /r "$INSTDIR"
  DeleteRegKey HKLM "${UNINSTALL_KEY}"
  ; %ProgramData%\scanfort (config, spool with unsent scans, logs) is deliberately kept.
  DetailPrint "Kept $APPDATA\scanfort (config and spool); delete it by hand if unneeded."
SectionEnd
