"""package.xml is well formed, format 3, and declares what the node and launch file import."""
import ast
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1]
# import root -> the rosdep key package.xml must name for it
IMPORT_KEYS = {
    'rclpy': 'rclpy', 'rcl_interfaces': 'rcl_interfaces', 'geometry_msgs': 'geometry_msgs',
    'sensor_msgs': 'sensor_msgs', 'std_msgs': 'std_msgs', 'trajectory_msgs': 'trajectory_msgs',
    'numpy': 'python3-numpy', 'yaml': 'python3-yaml', 'ament_index_python': 'ament_index_python',
    'launch': 'launch', 'launch_ros': 'launch_ros',
}


def _imports():
    roots = set()
    for path in [*PKG.glob('qsft_robot_ros/*.py'), *PKG.glob('launch/*.py')]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots |= {a.name.split('.')[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                roots.add(node.module.split('.')[0])
    return roots


@pytest.mark.linter
def test_package_xml_declares_imports():
    root = ET.parse(PKG / 'package.xml').getroot()
    assert root.get('format') == '3'
    declared = {e.text for e in root if e.tag in ('depend', 'exec_depend')}
    missing = {IMPORT_KEYS[m] for m in _imports() if m in IMPORT_KEYS} - declared
    assert not missing, f'package.xml lacks exec_depend for {sorted(missing)}'
